"""Benchmark: synchronous GRPO vs asynchronous GRPO (staleness 1, one Ray rollout worker).

    python bench/bench_async.py [--steps 10] [--eval-problems 0]

The quickstart's work (built-in tiny base, 16 prompts x 8 samples, <= 128 tokens, its
learning rate and task) three ways, one after the other in this process:

- synchronous at 1 and at 2 torch threads (the faster one is the baseline),
- asynchronous: one rollout worker (a Ray actor on one core, 1 thread) samples step s with
  the weights after step s - 1 while the trainer (1 thread) updates on step s - 1.

Seconds per step are the mean `step_time` of the run's metrics after the first two steps
(warm-up: the worker's start, the first weights). With `--eval-problems N` both final
models are also evaluated greedily on N held-out problems. The last line ends with the
speed-up ratio. A measurement, not a test: run it on an otherwise idle machine.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from ponder.rl.train import RLConfig, train

QUICKSTART = dict(model="tiny", task="arithmetic", task_options="min_digits=1 max_digits=5 ops=add,mul",
                  prompts_per_step=16, group_size=8, max_new_tokens=128, lr=2e-4, save_every=10**6,
                  tensorboard=False, progress=False, device="cpu")


def seconds_per_step(out: Path) -> float:
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return statistics.mean(m["step_time"] for m in lines[2:])


def accuracy(model_dir: Path, problems: int) -> float:
    from ponder.inference.evaluate import EvalConfig, evaluate
    from ponder.models.model import load_model
    from ponder.tasks.spec import make_task
    cfg = EvalConfig(model=str(model_dir), task="arithmetic", task_options=QUICKSTART["task_options"],
                     problems=problems, samples=1, max_new_tokens=128, device="cpu")
    model, tok = load_model(cfg.model, device="cpu")
    return evaluate(model, tok, make_task(cfg, tok), cfg)["summary"]["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eval-problems", type=int, default=0)
    args = ap.parse_args()
    assert args.steps >= 4, "--steps must be >= 4 (the first two are warm-up)"
    import ray
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # one core for the rollout worker
    with tempfile.TemporaryDirectory() as d:
        runs = {"sync, 1 thread": dict(threads=1), "sync, 2 threads": dict(threads=2),
                "async (staleness 1, 1 worker)": dict(threads=1, rollout_workers=1, max_staleness=1)}
        result = {}
        for name, extra in runs.items():
            out = Path(d) / name.split()[0].strip(",") / str(len(result))
            model = train(RLConfig(out=str(out), steps=args.steps, **QUICKSTART, **extra))
            result[name] = {"s_per_step": seconds_per_step(out)}
            if args.eval_problems:
                result[name]["greedy_accuracy"] = accuracy(model, args.eval_problems)
            print(f"{name}: {result[name]}", flush=True)
    sync = min(result["sync, 1 thread"]["s_per_step"], result["sync, 2 threads"]["s_per_step"])
    asyn = result["async (staleness 1, 1 worker)"]["s_per_step"]
    print(json.dumps(result))
    print(f"synchronous (fastest thread count) {sync:.3f} s/step, asynchronous {asyn:.3f} s/step: "
          f"speed-up {sync / asyn:.2f}x")


if __name__ == "__main__":
    main()
