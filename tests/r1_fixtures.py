"""Shared helpers of the R1-recipe tests: a very small model on disk, trace files, an always-correct task."""

from __future__ import annotations

import json
from pathlib import Path

from ponder.models.model import TinyModelConfig, new_tiny, save_model
from ponder.tasks.arithmetic import ArithmeticTask, column_steps
from ponder.tasks.base import Example, Task
from ponder.core.verdict import Verdict

SMALL = TinyModelConfig(hidden_size=32, layers=1, heads=2, mlp_ratio=2)


def small_model(folder: Path) -> str:
    model, tok = new_tiny(SMALL, seed=0)
    return str(save_model(model, tok, folder))


def write_traces(path: Path, n: int, seed: int = 0) -> Path:
    """`n` correct column-method traces of 2-digit additions, one JSON object per line."""
    task = ArithmeticTask(ops="add", min_digits=2, max_digits=2)
    rows = []
    for ex, p in zip(task.examples("train", n, seed), task.problems("train", n, seed)):
        think = "\n".join(column_steps(p))
        rows.append({"prompt": ex.prompt, "completion": f"<think>{think}</think>{ex.answer}", "prompt_id": ex.id})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class AnyTask(Task):
    """Every completion is correct: collection keeps everything, so tests need no trained model."""

    name = "any"

    def examples(self, split, n, seed=0):
        return [Example(id=f"{split}-{seed}-{i}", prompt=f"{i}+{seed}=?\n", answer=str(i + seed)) for i in range(n)]

    def verify(self, completion, example):
        return Verdict(1.0, "correct", "anything goes")


class DigitsTask(Task):
    """Reward = share of digits in the completion: graded, so a random model gets a learning signal."""

    name = "digits"

    def examples(self, split, n, seed=0):
        return [Example(id=f"{split}{seed}-{i}", prompt=f"{i % 7}:", answer="") for i in range(n)]

    def verify(self, completion, example):
        share = sum(c.isdigit() for c in completion) / max(1, len(completion))
        return Verdict(share, "correct" if share >= 0.5 else "wrong", f"{share:.2f} digits")
