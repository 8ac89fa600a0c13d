"""What a finished run directory holds, read the same way by every test: its per-step metrics
and its final weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def metrics(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl, one dict per step."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final model's weights (RUN/model/model.safetensors)."""
    return load_file(Path(run_dir) / "model" / "model.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same keys (in fp32)."""
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
