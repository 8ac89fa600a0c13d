"""Plot reward and thinking length per step of two or more runs side by side.

    python docs/compare_curves.py runs/quickstart/rl runs/orz --labels GRPO PPO --out docs/ppo_vs_grpo.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(run: Path, key: str) -> tuple[list[int], list[float]]:
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row  # a resumed run's repeated step: the last one counts
    steps = sorted(rows)
    return steps, [rows[s].get(key, float("nan")) for s in steps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    labels = a.labels or [r.name for r in a.runs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run, label in zip(a.runs, labels):
        for ax, key in zip(axes, ("reward", "think_len_mean")):
            ax.plot(*series(run, key), label=label)
    for ax, title in zip(axes, ("training reward (sampled, T = 1)", "mean thinking tokens")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
