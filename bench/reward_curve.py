"""Benchmark: does ponder learn the same with its speed-ups on as with them off?

    python bench/reward_curve.py [--steps 12] [--lr 2e-5] [--eval-problems 100] [--threads 2] [--seed 0]
                                 [--arms before,after] [--sampler-correction]

The work of bench/vs_trl.py (SmolLM2-135M-Instruct, chat-formatted 1- and 2-digit sums,
8 prompts x 8 samples, <= 128 tokens, T = 1), at a learning rate that moves the model within
a few steps, run twice from the same seed on the same prompts:

- before: fp32 and every speed-up of the update off (no zero-advantage skipping, a separate
  old-log-prob pass, whole rows instead of shared prompts) -- the plain loop;
- after: ponder's defaults for this work -- bf16 rollouts from a bf16 copy (grouped decode
  attention, fused projections) and bf16 autocast in the update, every exact speed-up on.

The exact speed-ups give the same update (tests/test_exact_speedups.py,
tests/test_shared_prompt.py); bf16 does not, so the two runs sample different tokens from the
first step on and only their learning can be compared: the mean training reward per step, its
mean over the second half of the run, and the greedy accuracy of both final models on the same
held-out problems (fp32 evaluation). Printed with the seconds per step; the last line gives
the held-out accuracies. A measurement, not a test.

`--sampler-correction` adds a third run: "after" with `sampler_correction` (each completion
token weighted by min(pi_update / pi_sampler, 2), the bf16 sampler's own log-probs recorded as
it samples), which corrects the update for the sampler computing other numbers than it.

`--arms` picks the runs (default before,after); `bf16-rollouts` (fp32 update, rollouts from the
bf16 copy) and `bf16-update` (fp32 rollouts, bf16 autocast update) split the two halves of
"after", both with the exact speed-ups on, to tell which half changes the learning.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from vs_trl import TASK_OPTIONS, TEMPERATURE

from ponder.core.stats import wilson_ci
from ponder.models.model import resolve_model_path
from ponder.rl.train import RLConfig, train

ARMS = {"before": ("before (fp32, speed-ups off)", dict(precision="fp32", skip_zero_advantage=False,
                                                        reuse_logprobs=False, share_prompt=False)),
        "after": ("after (bf16, speed-ups on)", dict(precision="bf16")),
        "corrected": ("after + sampler correction", dict(precision="bf16", sampler_correction=True)),
        "bf16-rollouts": ("bf16 rollouts, fp32 update", dict(precision="fp32", rollout_precision="bf16")),
        "bf16-update": ("fp32 rollouts, bf16 update", dict(precision="bf16", rollout_precision="fp32"))}


def held_out_accuracy(model_dir: Path, problems: int, threads: int) -> tuple[int, int]:
    from ponder.inference.evaluate import EvalConfig, evaluate
    from ponder.models.model import load_model
    from ponder.tasks.spec import make_task
    cfg = EvalConfig(model=str(model_dir), task="arithmetic", task_options=TASK_OPTIONS, prompt_format="chat",
                     problems=problems, samples=1, max_new_tokens=128, threads=threads, device="cpu")
    model, tok = load_model(cfg.model, device="cpu")
    s = evaluate(model, tok, make_task(cfg, tok), cfg)["summary"]
    return round(s["accuracy"] * s["n_problems"]), s["n_problems"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--eval-problems", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="the runs' seed (prompts and sampling)")
    ap.add_argument("--arms", default="before,after", help="the runs, comma-separated: " + ", ".join(ARMS))
    ap.add_argument("--sampler-correction", action="store_true", help="also the arm 'corrected'")
    args = ap.parse_args()
    names = [a.strip() for a in args.arms.split(",") if a.strip()] + (["corrected"] if args.sampler_correction else [])
    bad = [a for a in names if a not in ARMS]
    if bad:
        ap.error(f"--arms {bad[0]!r} is not an arm; valid: {', '.join(ARMS)}")
    runs = dict(ARMS[a] for a in dict.fromkeys(names))
    folder = resolve_model_path(args.model)
    result = {}
    with tempfile.TemporaryDirectory() as d:
        for name, extra in runs.items():
            out = Path(d) / str(len(result))
            cfg = RLConfig(model=str(folder), task="arithmetic", task_options=TASK_OPTIONS, out=str(out),
                           steps=args.steps, prompts_per_step=8, group_size=8, max_new_tokens=128,
                           temperature=TEMPERATURE, lr=args.lr, warmup=1, track_kl=False, prompt_format="chat",
                           threads=args.threads, seed=args.seed, save_every=10**6, tensorboard=False, progress=False,
                           **extra)
            model = train(cfg)
            rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
            right, n = held_out_accuracy(model, args.eval_problems, args.threads) if args.eval_problems else (0, 0)
            result[name] = {"reward": [r["reward"] for r in rows], "s_per_step": statistics.mean(
                r["step_time"] for r in rows[1:]), "held_out": (right, n)}
            print(f"{name}: {json.dumps(result[name])}", flush=True)
    print(f"{'step':>4}  " + "  ".join(f"{n:>28}" for n in result))
    for i in range(args.steps):
        print(f"{i + 1:4d}  " + "  ".join(f"{r['reward'][i]:28.3f}" for r in result.values()))
    half = args.steps // 2
    for name, r in result.items():
        right, n = r["held_out"]
        lo, hi = wilson_ci(right, n) if n else (0.0, 0.0)
        print(f"{name}: mean reward, steps {half + 1}-{args.steps}: {statistics.mean(r['reward'][half:]):.3f}; "
              f"{r['s_per_step']:.1f} s/step; held-out greedy {right}/{n} [{lo:.2f}, {hi:.2f}]")
    print("held-out greedy accuracy: " + ", ".join(f"{name} {r['held_out'][0]}/{r['held_out'][1]}"
                                                     for name, r in result.items()))


if __name__ == "__main__":
    main()
