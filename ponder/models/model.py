"""Models: the built-in tiny base, and loading/saving any HF causal LM folder.

The tiny base is a plain `transformers` LlamaForCausalLM, so every tool that
reads Hugging Face folders (config.json + model.safetensors + tokenizer.json)
can read what ponder writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # ponder shows its own progress; weight loading is instant here

from ponder.core.config import ConfigError, check_choices, option
from ponder.core.device import resolve as resolve_device
from ponder.models.tokenizer import build_char_tokenizer

ASSETS = Path(__file__).parent.parent / "assets"
BUILTIN_BASE = ASSETS / "tiny-base"  # shipped, built by `ponder pretrain` with its defaults
# shipped, built by `ponder pretrain --p-calc 0.2 --max-digits 7`: the same model, a corpus where a
# fifth of the solutions call the calculator (issue 18's base for learning when to call it)
TOOLS_BASE = ASSETS / "tiny-tools"


@dataclass(frozen=True)
class TinyModelConfig:
    hidden_size: int = option(128, "width of the residual stream")
    layers: int = option(4, "number of transformer blocks")
    heads: int = option(4, "attention heads (head dim = hidden_size / heads)")
    mlp_ratio: int = option(3, "MLP hidden size as a multiple of hidden_size")
    max_positions: int = option(256, "longest sequence the model is built for")

    def __post_init__(self):
        check_choices(self)
        if self.hidden_size % self.heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")


def build_tiny_model(cfg: TinyModelConfig, vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    hf_cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_ratio * cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(hf_cfg)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resolve_model_path(name_or_path: str | Path) -> Path:
    """`tiny` (or `builtin`) names the shipped base, `tiny-tools` the shipped tool base; anything
    else goes through `ponder.models.hf.resolve_pretrained` (HF folder, .gguf file, cached hub id, alias)."""
    if str(name_or_path) in ("tiny", "builtin", "tiny-base"):
        return BUILTIN_BASE
    if str(name_or_path) == "tiny-tools":
        if not (TOOLS_BASE / "model.safetensors").is_file():
            raise ConfigError(f"the tool base 'tiny-tools' is not in this install ({TOOLS_BASE} has no weights); "
                              f"build it with: ponder pretrain --p-calc 0.2 --max-digits 7 --threads 1 "
                              f"--out {TOOLS_BASE}")
        return TOOLS_BASE
    from ponder.models.hf import resolve_pretrained
    return resolve_pretrained(name_or_path)


def load_model(name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a folder; the model is in eval mode on `device`
    (a `torch.device`, or a `--device` value: auto, cpu, cuda)."""
    from ponder.models.hf import check_causal_lm
    path = resolve_model_path(name_or_path)
    check_causal_lm(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model.to(device if isinstance(device, torch.device) else resolve_device(device)), tok


def load_tokenizer(name_or_path: str | Path):
    """The tokenizer of a model folder, without loading its weights."""
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


def save_model(model, tokenizer, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def new_tiny(cfg: TinyModelConfig | None = None, seed: int = 0):
    tok = build_char_tokenizer()
    return build_tiny_model(cfg or TinyModelConfig(), len(tok), seed), tok
