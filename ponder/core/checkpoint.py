"""Checkpoints that survive a crash at any moment.

A checkpoint is a folder `step-NNNNNN/` holding the model as an HF folder
(safetensors) and `trainer_state.pt` (optimizer, step, RNG states). It is
written under a temporary name, a `COMPLETE` marker is written last, and only
then is the folder renamed into place; `latest()` ignores anything without
the marker, so a kill during a write leaves the previous checkpoint in use.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

MARKER = "COMPLETE"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(ckpt_root: str | Path, step: int, model, tokenizer, trainer_state: dict, keep: int = 2) -> Path:
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    with open(tmp / MARKER, "w") as f:
        f.write(str(step))
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / MARKER).is_file())


def latest(ckpt_root: str | Path) -> Path | None:
    found = complete(ckpt_root)
    return found[-1] if found else None


def load_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)


class StopFlag:
    """A SIGINT handler for resumable loops: Ctrl-C sets a flag; the loop finishes its
    step, saves a checkpoint and says how to resume. A second Ctrl-C stops at once."""

    def __init__(self):
        self.set = False

    def __call__(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
