"""The step breakdown the RL benchmarks print: where a ponder GRPO step's seconds go.

Reads the `time_*` metrics `ponder train` records each step (`ponder.rl.train.step_breakdown`)
and the on/off state of the update's exact speed-ups. Imported by bench/bench_rl.py and
bench/vs_trl.py.
"""

from __future__ import annotations

import statistics

PHASES = ("generation", "verification", "logprobs", "fwd_bwd", "optimizer", "other")
LABELS = {"generation": "generation", "verification": "verification", "logprobs": "log-prob passes",
          "fwd_bwd": "forward/backward", "optimizer": "optimizer", "other": "other"}
SPEEDUPS = ("skip_zero_advantage", "reuse_logprobs")


def mean_breakdown(rows: list[dict]) -> dict[str, float]:
    """Mean seconds per phase over `rows` (metrics.jsonl rows), plus the step time."""
    out = {p: statistics.mean(r.get(f"time_{p}", 0.0) for r in rows) for p in PHASES}
    out["step"] = statistics.mean(r["step_time"] for r in rows)
    return out


def breakdown_lines(rows: list[dict], cfg: dict, title: str = "ponder") -> list[str]:
    """Printable lines: each phase's mean seconds and share of the step, and the speed-ups' state."""
    b = mean_breakdown(rows)
    lines = [f"{title} step breakdown (mean of {len(rows)} steps, {b['step']:.2f} s/step):"]
    for p in PHASES:
        lines.append(f"  {LABELS[p]:18s}{b[p]:8.2f} s  {100 * b[p] / b['step']:5.1f}%")
    skipped = statistics.mean(r.get("skipped_frac", 0.0) for r in rows)
    flags = ", ".join(f"{k} = {'on' if cfg.get(k) else 'off'}" for k in SPEEDUPS)
    lines.append(f"  exact speed-ups: {flags}; rows skipped {100 * skipped:.0f}%; precision {cfg.get('precision')}")
    return lines
