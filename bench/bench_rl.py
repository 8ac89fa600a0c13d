"""Benchmark: rollout tokens/s and seconds per GRPO step on the built-in tiny base.

    python bench/bench_rl.py [--model tiny] [--steps 6] [--threads 0]

Runs a short GRPO run with the quickstart's batch shape (16 prompts x 8
samples, up to 128 tokens) and prints per-step timings; the first step is
excluded as warm-up, and where each step's seconds go (generation, verification,
log-prob passes, forward/backward, optimizer, other) with the on/off state of the
update's exact speed-ups (`--skip-zero-advantage`, `--reuse-logprobs`). This is a
measurement, not a test.
"""

import argparse
import json
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

from breakdown import breakdown_lines
from ponder.rl.train import RLConfig, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--skip-zero-advantage", choices=("on", "off"), default="on")
    ap.add_argument("--reuse-logprobs", choices=("on", "off"), default="on")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = RLConfig(model=args.model, out=d, steps=args.steps, prompts_per_step=args.prompts,
                       group_size=args.group, save_every=10**6, tensorboard=False, progress=False,
                       threads=args.threads, task_options="min_digits=1 max_digits=5 ops=add,mul",
                       precision=args.precision, skip_zero_advantage=args.skip_zero_advantage == "on",
                       reuse_logprobs=args.reuse_logprobs == "on")
        train(cfg)
        rows = [json.loads(l) for l in (Path(d) / "metrics.jsonl").read_text().splitlines()][1:]
    med = lambda k: statistics.median(r[k] for r in rows)
    print(f"steps measured: {len(rows)} (first excluded), batch {args.prompts}x{args.group}")
    print(f"rollout tokens/s      {med('tokens_per_s'):10.0f}")
    print(f"generation s per step {med('gen_seconds'):10.3f}")
    print(f"update s per step     {med('train_seconds'):10.3f}")
    print(f"seconds per GRPO step {med('step_time'):10.3f}")
    print("\n".join(breakdown_lines(rows, asdict(cfg))))


if __name__ == "__main__":
    main()
