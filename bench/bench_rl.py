"""Benchmark: rollout tokens/s and seconds per GRPO step on the built-in tiny base.

    python bench/bench_rl.py [--model tiny] [--steps 6] [--threads 0]

Runs a short GRPO run with the quickstart's batch shape (16 prompts x 8
samples, up to 128 tokens) and prints per-step timings; the first step is
excluded as warm-up. This is a measurement, not a test.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from ponder.rl.train import RLConfig, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = RLConfig(model=args.model, out=d, steps=args.steps, prompts_per_step=args.prompts,
                       group_size=args.group, save_every=10**6, tensorboard=False, progress=False,
                       threads=args.threads, task_options="min_digits=1 max_digits=5 ops=add,mul")
        train(cfg)
        rows = [json.loads(l) for l in (Path(d) / "metrics.jsonl").read_text().splitlines()][1:]
    med = lambda k: statistics.median(r[k] for r in rows)
    print(f"steps measured: {len(rows)} (first excluded), batch {args.prompts}x{args.group}")
    print(f"rollout tokens/s      {med('tokens_per_s'):10.0f}")
    print(f"generation s per step {med('gen_seconds'):10.3f}")
    print(f"update s per step     {med('train_seconds'):10.3f}")
    print(f"seconds per GRPO step {med('step_time'):10.3f}")


if __name__ == "__main__":
    main()
