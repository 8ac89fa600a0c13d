"""Benchmark: ponder vs TRL's GRPOTrainer, same model, same work, same machine.

    python bench/vs_trl.py [--model smollm2-135m] [--steps 3] [--threads 2]

Both tools run GRPO on the same SmolLM2-135M-Instruct HF folder with the same
work per step: 8 prompts x 8 samples, up to 128 completion tokens, temperature
1.0, the same prompts (the arithmetic task's train prompts for steps 0, 1, 2,
rendered once with the chat template and handed to both as plain text) and the
same reward function (ponder's chat-task verifier: the last number of the
answer, 1.0 when it equals the sum). 1- and 2-digit sums: SmolLM2 gets some of
them right, so groups have reward variance and both tools do real updates.

Each tool runs in its own child process (so each gets a clean peak RSS); the
first step is warm-up and excluded. Printed: s/step, completion tokens/s
(completion tokens / step wall time), the fraction of zero-variance groups,
peak RSS, and last the ratio TRL s/step / ponder s/step.

Settings that differ, on purpose, and are printed: ponder runs bf16 matmuls
(`precision = "bf16"`: rollouts from a bf16 copy of the policy, bf16 autocast in
the update, weights and optimizer fp32; `--ponder-precision fp32` turns it off);
TRL runs as its users run it on a CPU, fp32 (`--trl-bf16` gives it bf16 autocast
too). Neither computes a KL term (TRL's default beta = 0; ponder's track_kl
off). TRL does a forward/backward on every group; ponder skips the rows whose
advantage is exactly 0 (zero-variance groups) -- an exact speed-up, the same
update (tests/test_exact_speedups.py) -- unless `--ponder-skip-zero-advantage off`.
Each exact speed-up's on/off state is printed with ponder's step breakdown
(generation, verification, log-prob passes, forward/backward, optimizer, other);
for TRL the breakdown reads its generation, reward, no-grad log-prob and
optimizer phases, and the rest is its forward/backward and everything else.
TRL is a benchmark dependency only: `pip install -e .[bench]` (or `pip install trl datasets`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from breakdown import breakdown_lines
from ponder.core.metrics import peak_rss_gb

TEMPERATURE, LR = 1.0, 1e-6
TASK_OPTIONS = "min_digits=1 max_digits=2 ops=add"


def shared_setup(model: str, prompts: int, group: int):
    """The model folder, the chat-wrapped task and each step's examples, identical for both tools."""
    from ponder.tasks.chat import adapt_task
    from ponder.models.model import load_model, resolve_model_path
    from ponder.tasks import get_task
    from ponder.rl.train import RLConfig, step_examples
    from ponder.tasks.spec import parse_task_options

    folder = resolve_model_path(model)
    _, tok = load_model(folder)
    task = adapt_task(get_task("arithmetic", **parse_task_options(TASK_OPTIONS)), tok, "chat")
    cfg = RLConfig(prompts_per_step=prompts, group_size=group)
    return folder, task, lambda step: step_examples(task, cfg, step, 0)


def zero_var_fraction(rewards_by_prompt: dict[str, list[float]]) -> float:
    groups = list(rewards_by_prompt.values())
    return sum(max(g) == min(g) for g in groups) / len(groups)


def run_ponder(a, out: Path) -> dict:
    from ponder.rl.train import RLConfig, train

    folder, _, _ = shared_setup(a.model, a.prompts, a.group)
    cfg = RLConfig(model=str(folder), task="arithmetic", task_options=TASK_OPTIONS, out=str(out), steps=a.steps,
                   prompts_per_step=a.prompts, group_size=a.group, max_new_tokens=a.max_tokens,
                   temperature=TEMPERATURE, lr=LR, warmup=1, track_kl=False, prompt_format="chat",
                   precision=a.ponder_precision, threads=a.threads, save_every=10**6, tensorboard=False,
                   progress=False, skip_zero_advantage=a.ponder_skip_zero_advantage == "on",
                   reuse_logprobs=a.ponder_reuse_logprobs == "on")
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"step_seconds": [r["step_time"] for r in rows],
            "breakdown": breakdown_lines(rows[1:], asdict(cfg)),
            "completion_tokens": [r["tokens_per_s"] * r["gen_seconds"] for r in rows],
            "zero_var": [r["zero_var_frac"] for r in rows],
            "precision": "bf16 rollouts + autocast" if a.ponder_precision == "bf16" else "fp32"}


def run_trl(a, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(a.threads)
    folder, task, examples_of = shared_setup(a.model, a.prompts, a.group)
    steps_examples = [examples_of(s) for s in range(a.steps)]
    by_prompt = {ex.prompt: ex for exs in steps_examples for ex in exs}
    rows = [{"prompt": ex.prompt} for exs in steps_examples for ex in exs]  # step-major, no shuffling
    rewards_seen: list[dict[str, list[float]]] = []

    def reward(prompts, completions, **_):
        scores = [task.verify(c, by_prompt[p]).score for p, c in zip(prompts, completions)]
        groups: dict[str, list[float]] = {}
        for p, s in zip(prompts, scores):
            groups.setdefault(p, []).append(s)
        rewards_seen.append(groups)
        return scores

    marks: list[float] = []
    lengths: list[float] = []
    phases: list[dict[str, float]] = [{}]  # per step: seconds of the phases TRL's methods show

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())
            phases.append({})

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    args = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=a.group, gradient_accumulation_steps=a.prompts,
        num_generations=a.group, max_completion_length=a.max_tokens, temperature=TEMPERATURE, learning_rate=LR,
        beta=0.0, max_steps=a.steps, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        bf16=a.trl_bf16, shuffle_dataset=False, seed=0, disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(folder)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                          reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=[Clock(), optimizer_clock(phases)])
    time_trl_phases(trainer, phases)
    trainer.train()
    step_s = [b - a for a, b in zip(marks, marks[1:])]
    return {"step_seconds": step_s, "completion_tokens": [m * a.prompts * a.group for m in lengths],
            "breakdown": trl_breakdown_lines(step_s[1:], phases[1:len(step_s)]),
            "zero_var": [zero_var_fraction(g) for g in rewards_seen],
            "precision": "bf16 autocast" if a.trl_bf16 else "fp32"}


def _timed(fn, phases: list[dict[str, float]], name: str, grad: bool | None = None):
    """`fn`, adding its wall seconds to the current step's `name` (only when autograd is on / off, if `grad`)."""
    import torch

    def wrapper(*args, **kwargs):
        if grad is not None and torch.is_grad_enabled() != grad:
            return fn(*args, **kwargs)
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[-1][name] = phases[-1].get(name, 0.0) + time.perf_counter() - t
    return wrapper


def time_trl_phases(trainer, phases: list[dict[str, float]]) -> None:
    """Time TRL's generation, reward and no-grad log-prob phases by wrapping its methods on this instance
    (names of TRL 1.x; a TRL without one of them shows that phase as 0 and its time under the rest)."""
    for method, phase, grad in (("_generate_single_turn", "generation", None),
                                ("_calculate_rewards", "verification", None),
                                ("_get_per_token_logps_and_entropies", "logprobs", False)):
        if hasattr(trainer, method):
            setattr(trainer, method, _timed(getattr(trainer, method), phases, phase, grad))


def optimizer_clock(phases: list[dict[str, float]]):
    """A callback adding each optimizer step's seconds to the current step's phases."""
    from transformers import TrainerCallback

    class OptimizerClock(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            phases[-1]["optimizer"] = phases[-1].get("optimizer", 0.0) + time.perf_counter() - self.t
    return OptimizerClock()


def trl_breakdown_lines(step_s: list[float], phases: list[dict[str, float]]) -> list[str]:
    """TRL's step breakdown: the phases read from its methods, the rest as forward/backward + other."""
    if not step_s:
        return []
    n, step = len(step_s), statistics.mean(step_s)
    mean = {k: sum(p.get(k, 0.0) for p in phases) / n for k in ("generation", "verification", "logprobs", "optimizer")}
    mean["forward/backward + other"] = step - sum(mean.values())
    lines = [f"trl step breakdown (mean of {n} steps, {step:.2f} s/step):"]
    lines += [f"  {k:24s}{v:8.2f} s  {100 * v / step:5.1f}%" for k, v in mean.items()]
    return lines


def child(tool: str, args) -> int:
    with tempfile.TemporaryDirectory() as d:
        res = run_ponder(args, Path(d)) if tool == "ponder" else run_trl(args, Path(d))
    res["peak_rss_gb"] = peak_rss_gb()
    Path(args.result).write_text(json.dumps(res))
    return 0


def summary(res: dict) -> dict:
    """Mean over the measured steps (the first is warm-up)."""
    s, tok, zv = res["step_seconds"][1:], res["completion_tokens"][1:], res["zero_var"][1:]
    return {"s_per_step": statistics.mean(s), "tokens_per_s": sum(tok) / sum(s),
            "zero_var": statistics.mean(zv) if zv else float("nan"), "rss": res["peak_rss_gb"],
            "precision": res["precision"], "steps": len(s), "breakdown": res.get("breakdown", [])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=3, help="steps per tool; the first is warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trl-bf16", action="store_true", help="give TRL bf16 autocast as well")
    ap.add_argument("--ponder-precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (the comparison uses 8)")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt (the comparison uses 8)")
    ap.add_argument("--max-tokens", type=int, default=128, help="completion token limit (the comparison uses 128)")
    ap.add_argument("--ponder-skip-zero-advantage", choices=("on", "off"), default="on",
                    help="ponder's exact speed-up: no forward/backward for rows with advantage 0")
    ap.add_argument("--ponder-reuse-logprobs", choices=("on", "off"), default="on",
                    help="ponder's exact speed-up: old log-probs from the update's own first forward")
    ap.add_argument("--only", choices=("ponder", "trl"), help="run one tool (what the parent does per child)")
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be >= 2: the first step is warm-up")
    if args.only:
        return child(args.only, args)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for tool in ("ponder", "trl"):
            path = Path(d) / f"{tool}.json"
            cmd = [sys.executable, __file__, "--only", tool, "--result", str(path), "--model", args.model,
                   "--steps", str(args.steps), "--threads", str(args.threads), "--prompts", str(args.prompts),
                   "--group", str(args.group), "--max-tokens", str(args.max_tokens),
                   "--ponder-precision", args.ponder_precision,
                   "--ponder-skip-zero-advantage", args.ponder_skip_zero_advantage,
                   "--ponder-reuse-logprobs", args.ponder_reuse_logprobs] + (["--trl-bf16"] if args.trl_bf16 else [])
            print(f"running {tool} ...", flush=True)
            subprocess.run(cmd, check=True)
            results[tool] = summary(json.loads(path.read_text()))
    print(f"\nwork per step: {args.prompts} prompts x {args.group} samples, <= {args.max_tokens} tokens, T={TEMPERATURE}; "
          f"{args.steps} steps, first excluded; {args.threads} threads")
    print(f"{'':8s}{'s/step':>10s}{'tok/s':>10s}{'zero-var':>10s}{'peak RSS':>10s}  precision")
    for tool, r in results.items():
        print(f"{tool:8s}{r['s_per_step']:10.1f}{r['tokens_per_s']:10.1f}{r['zero_var']:10.2f}"
              f"{r['rss']:9.2f}G  {r['precision']}")
    for r in results.values():
        print("\n".join(r["breakdown"]))
    print(f"ratio (TRL s/step / ponder s/step): {results['trl']['s_per_step'] / results['ponder']['s_per_step']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
