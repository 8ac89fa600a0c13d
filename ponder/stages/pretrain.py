"""`ponder pretrain`: build the built-in tiny base from the synthetic corpus.

Next-token prediction on documents from `ponder.corpus` (every answer
correct; solution styles mixed). Deterministic in `seed` on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.core import config as C
from ponder.core.loop import TrainingLoop
from ponder.core.config import RunFields, check_choices, option
from ponder.core.device import of as device_of, resolve as resolve_device
from ponder.stages.corpus import CorpusMix, documents
from ponder.models.model import BUILTIN_BASE, TinyModelConfig, count_params, new_tiny, save_model


@dataclass(frozen=True)
class PretrainConfig(RunFields):
    out: str = option(str(BUILTIN_BASE), "folder to write the HF model to")
    steps: int = option(2500, "optimizer steps")
    batch_size: int = option(64, "documents per step")
    lr: float = option(1.5e-3, "peak learning rate (AdamW), cosine decay to 10%")
    warmup: int = option(100, "linear warm-up steps")
    weight_decay: float = option(0.01, "AdamW weight decay")
    hidden_size: int = option(128, "model width")
    layers: int = option(4, "transformer blocks")
    heads: int = option(4, "attention heads")
    p_direct: float = option(0.55, "corpus share answering with no work shown")
    p_partial: float = option(0.25, "corpus share showing the first k column steps")
    p_check: float = option(0.5, "share of full solutions ending with a self-check")
    max_digits: int = option(5, "most digits in a corpus problem")
    p_calc: float = option(0.0, "share of solutions that call the calculator for the whole problem "
                           "(<calc>…</calc><output>…</output>, the tool base's corpus); 0 = the shipped base's corpus")
    save_every: int = option(500, "also save the model every N steps (so a crash loses little)")
    row_tokens: int = option(256, "documents are packed into rows of at most this many tokens")

    def __post_init__(self):
        check_choices(self)
        if self.steps < 1 or self.batch_size < 1:
            raise C.ConfigError(f"steps={self.steps} and batch_size={self.batch_size} must be >= 1")


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def encode_batch(tok, docs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, T), right-padded; each doc is <bos> text <eos>."""
    rows = [tok(d)["input_ids"] + [tok.eos_token_id] for d in docs]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    ids, mask = ids.to(device_of(model)), mask.to(device_of(model))
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)


def pack_documents(tok, docs: list[str], row_tokens: int):
    """Pack whole documents into rows, each attending only within its own document.

    Returns ids (R, L), targets (R, L) with -100 where no loss applies, positions
    (R, L) restarting at 0 for each document, and a block-diagonal causal mask
    (R, 1, L, L). Mathematically the same as one padded row per document (tested),
    without spending compute on padding: documents here vary from ~10 to ~100 tokens.
    """
    encoded = [tok(d)["input_ids"] + [tok.eos_token_id] for d in docs]
    rows: list[list[list[int]]] = [[]]
    for e in encoded:
        if rows[-1] and sum(map(len, rows[-1])) + len(e) > row_tokens:
            rows.append([])
        rows[-1].append(e[:row_tokens])
    L = max(sum(map(len, r)) for r in rows)
    R = len(rows)
    ids = torch.full((R, L), tok.pad_token_id, dtype=torch.long)
    targets = torch.full((R, L), -100, dtype=torch.long)
    pos = torch.zeros((R, L), dtype=torch.long)
    seg = torch.full((R, L), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        at = 0
        for j, e in enumerate(row):
            n = len(e)
            ids[i, at:at + n] = torch.tensor(e)
            targets[i, at:at + n - 1] = torch.tensor(e[1:])
            pos[i, at:at + n] = torch.arange(n)
            seg[i, at:at + n] = j
            at += n
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0) & causal
    mask |= torch.eye(L, dtype=torch.bool)  # padding rows attend to themselves (no NaN); they carry no loss
    return ids, targets, pos, mask.unsqueeze(1)


def packed_loss(model, ids, targets, pos, mask) -> torch.Tensor:
    dev = device_of(model)
    ids, targets, pos, mask = ids.to(dev), targets.to(dev), pos.to(dev), mask.to(dev)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # (R, L, V)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def pretrain(cfg: PretrainConfig) -> Path:
    C.set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    mcfg = TinyModelConfig(hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads)
    model, tok = new_tiny(mcfg, seed=cfg.seed)
    model = model.to(resolve_device(cfg.device)).train()
    mix = CorpusMix(p_direct=cfg.p_direct, p_partial=cfg.p_partial, p_check=cfg.p_check, max_digits=cfg.max_digits,
                    p_calc=cfg.p_calc)
    stream = documents(mix, cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    print(f"pretraining a {count_params(model) / 1e6:.2f}M-parameter model for {cfg.steps} steps")
    t0 = time.time()
    hint = "(pretraining does not resume: the model so far is saved; run it again to rebuild)"
    with TrainingLoop(None, cfg.steps, desc="pretrain", save_every=cfg.save_every, resume_hint=hint) as loop:
        for step in loop:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            batch = pack_documents(tok, [next(stream) for _ in range(cfg.batch_size)], cfg.row_tokens)
            loss = packed_loss(model, *batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretraining loss is {loss.item()} at step {step}; nothing was saved")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done = step + 1
            if loop.end_step(done, None, **({"loss": f"{loss.item():.4f}"} if step % 50 == 0 else {})) \
                    and (done < cfg.steps or loop.stop.set):
                _save_atomic(model, tok, cfg.out)
                model.train()
            loop.stop_if_asked(done)
    model.eval()
    out = _save_atomic(model, tok, cfg.out)
    (out / "ponder_pretrain.json").write_text(json.dumps(
        {"config": {k: v for k, v in asdict(cfg).items() if k != "out"}, "params": count_params(model),
         "seconds": round(time.time() - t0, 1),
         "command": " ".join(["ponder pretrain", C.command_flags(cfg, skip=("out", "device"))]).strip()}, indent=1))
    print(f"saved the base model to {out} ({time.time() - t0:.0f} s)")
    return out


def _save_atomic(model, tok, out: str) -> Path:
    """Write to a temporary folder, then swap it in: a crash never leaves a half-written model."""
    import shutil
    final, tmp = Path(out), Path(str(out) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    save_model(model, tok, tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder pretrain", description=__doc__)
    ap.add_argument("--recipe", help="TOML recipe with PretrainConfig keys")
    C.add_arguments(ap, PretrainConfig)
    args = ap.parse_args(argv)
    pretrain(C.from_args(PretrainConfig, args, args.recipe, section="pretrain"))
    return 0
