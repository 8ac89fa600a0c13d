"""Checkpoints that survive a crash at any moment, and a resume that survives a bad one.

A checkpoint is a folder `step-NNNNNN/` holding the model as an HF folder
(safetensors) and `trainer_state.pt` (optimizer, step, RNG states). It is
written under a temporary name; every file and the folder are fsynced, then a
`COMPLETE` marker (the step and each file's size and SHA-256) is written and
fsynced last, the folder is renamed into place and the parent folder fsynced,
so that after a power loss the marker never names data that is not on disk.
`latest()` ignores anything without the marker, so a kill during a write
leaves the previous checkpoint in use; `load_latest()` also checks the files
against the marker and falls back to an older checkpoint when one is damaged.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ponder.core.config import ConfigError
from ponder.core.io import fsync_dir as _fsync_dir, sha256_file

MARKER = "COMPLETE"
T = TypeVar("T")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def _seal(folder: Path, step: int) -> None:
    """fsync every file and folder of `folder`, then write the marker with each file's size and hash."""
    files = _files(folder)
    for p in files:
        _fsync_file(p)
    for d in sorted({p.parent for p in files} | {folder}, key=lambda d: len(d.parts), reverse=True):
        _fsync_dir(d)
    listing = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
               for p in files}
    with open(folder / MARKER, "w") as f:
        json.dump({"step": step, "files": listing}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(folder)


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (most often a full disk); the older ones are kept."""


def save(ckpt_root: str | Path, step: int, model, tokenizer, trainer_state: dict, keep: int = 2) -> Path:
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
        _seal(tmp, step)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError of its zip writer
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free / 2**20
        last = latest(root)
        raise CheckpointWriteError(
            f"checkpoint step {step} could not be written under {root} ({type(e).__name__}: {str(e)[:120]}); "
            f"{free:.0f} MB free there. The newest complete checkpoint "
            f"({last.name if last else 'none'}) is intact: fix the cause (a full disk: free some space) "
            f"and resume.") from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)  # the rename itself must survive a power loss
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


def damage(ckpt: Path) -> str | None:
    """Why a complete checkpoint's files do not match its marker (naming the file), or None.

    A marker from before file listings (just the step) cannot be checked and passes.
    """
    try:
        listing = json.loads((ckpt / MARKER).read_text()).get("files")
    except (ValueError, AttributeError):
        return None
    except OSError as e:
        return f"{ckpt / MARKER} cannot be read ({e.strerror})"
    for name, want in listing.items():
        p = ckpt / name
        if not p.is_file():
            return f"{p} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return f"{p} has {size} bytes, {want['size']} were written"
        if sha256_file(p) != want["sha256"]:
            return f"{p} does not match the SHA-256 recorded when it was written"
    return None


def load_latest(ckpt_root: str | Path, loader: Callable[[Path], T],
                say: Callable[[str], Any] = print) -> tuple[Path, T]:
    """(checkpoint, loader(checkpoint)) for the newest complete checkpoint that loads.

    Checkpoints are tried newest first; one whose files do not match its marker,
    or whose `loader` raises, is skipped with one line through `say` naming the
    bad file. Raises ConfigError (one line) when there is no complete checkpoint
    or none of them loads; a ConfigError from `loader` (the checkpoint does not
    fit this run, e.g. its data changed) is raised at once, not skipped.
    """
    root = Path(ckpt_root)
    found = complete(root)
    if not found:
        raise ConfigError(f"--resume: no complete checkpoint under {str(root)!r}")
    problems = []
    for path in reversed(found):
        why = damage(path)
        if why is None:
            try:
                return path, loader(path)
            except ConfigError:  # the checkpoint is fine but does not fit this run (changed data, ...)
                raise
            except Exception as e:  # any other failure to load means: try the previous checkpoint
                first = (str(e).strip().splitlines() or [""])[0]
                why = f"{path} does not load ({type(e).__name__}: {first})"
        problems.append(why)
        older = [p for p in found if p < path]
        if older:
            say(f"checkpoint {path.name} is damaged: {why}; falling back to {older[-1].name}")
    raise ConfigError(f"--resume: no checkpoint under {str(root)!r} loads: " + "; ".join(problems))


class StopFlag:
    """A SIGINT handler for resumable loops: Ctrl-C sets a flag; the loop finishes its
    step, saves a checkpoint and says how to resume. A second Ctrl-C stops at once."""

    def __init__(self):
        self.set = False

    def __call__(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
