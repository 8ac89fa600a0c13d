"""LoRA through the `peft` library: add adapters, reach the plain model, save, resume.

What is saved where:
- checkpoints (`checkpoints/step-N/`) hold the *adapter* only
  (`adapter_config.json` + `adapter_model.safetensors`, peft's format); the
  adapter config's `base_model_name_or_path` names the base folder it trains,
  and `trainer_state.pt` / the run's `config.json` name the model too, so a
  resume rebuilds base + adapter;
- the final model (`model/`) is *merged* into the base weights: a plain HF
  folder any tool reads, with no peft needed.
`peft` is imported only when LoRA is used.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ponder.core.config import ConfigError


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("lora_rank > 0 needs the 'peft' package: pip install peft") from None
    return peft


def add_lora(model, rank: int, alpha: float, targets: str, dropout: float = 0.0):
    """Wrap `model` with trainable rank-`rank` adapters on `targets` ('all-linear' or 'q_proj,v_proj,…');
    every base weight is frozen."""
    peft = _peft()
    target = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target,
                          bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, cfg)


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def plain_model(model):
    """The HF model inside a peft wrapper (adapters still active), so the engine's fast
    decoder sees the usual Llama module tree; `model` itself otherwise."""
    return model.get_base_model() if is_lora(model) else model


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def merged(model):
    """A plain HF model with the adapters folded into the weights (for the final save).
    Modifies `model` in place, so call it last."""
    return model.merge_and_unload() if is_lora(model) else model


def load_adapter_checkpoint(base, folder: Path):
    """Base model + the adapter saved in a checkpoint folder, trainable again."""
    return _peft().PeftModel.from_pretrained(base, str(folder), is_trainable=True)


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()
