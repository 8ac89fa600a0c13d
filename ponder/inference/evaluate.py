"""`ponder eval`: accuracy and thinking length on a held-out split.

Greedy decoding gives the headline accuracy (with a Wilson 95% interval),
mean thinking tokens and the self-check share; `samples` > 1 adds sampled
pass@1, unbiased pass@k (Codex estimator) and maj@k (with a per-problem 95%
interval).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

from ponder.core import config as C
from ponder.tasks.spec import TaskFields, formatted, make_task
from ponder.core.config import ConfigError, check_choices, option
from ponder.engine.engine import Engine, SamplingParams, rollout_copy
from ponder.core.metrics import shows_self_check
from ponder.models.model import load_model
from ponder.core.stats import maj_at_k, mean_pass_at_k, per_problem_ci, wilson_ci
from ponder.tasks.base import SPLITS, Task, answer_text


@dataclass(frozen=True)
class EvalConfig(TaskFields):
    model: str = option("tiny", "HF model folder ('tiny' = the built-in base)")
    split: str = option("test", "which split to evaluate", choices=SPLITS)
    problems: int = option(200, "number of problems")
    samples: int = option(8, "samples per problem for pass@k / maj@k (1 = greedy only)")
    temperature: float = option(1.0, "temperature of the sampled pass")
    max_new_tokens: int = option(128, "completion token limit")
    seed: int = option(0, "seed of the problems and of sampling")
    label: str = option("eval", "name of this evaluation in reports")
    out: str = option("", "write the JSON result here (default: print the summary only)")
    chunk: int = option(64, "prompts per generation batch")
    threads: int = option(0, "torch CPU threads (0 = torch's default; results are exactly repeatable at a fixed count)")
    precision: str = option("fp32", "weights generation runs with (bf16: a bf16 copy; faster on AMX CPUs)",
                            choices=("fp32", "bf16"))

    def __post_init__(self):
        check_choices(self)
        if self.problems < 1 or self.samples < 1 or self.chunk < 1:
            raise ConfigError(f"problems, samples and chunk must be >= 1; got {self.problems}, {self.samples}, {self.chunk}")


def _generate(engine: Engine, prompts: list[str], n: int, params: SamplingParams, seed: int, chunk: int):
    out, tokens, seconds = [], 0, 0.0
    for i in range(0, len(prompts), chunk):
        out += engine.generate(prompts[i:i + chunk], n, params, seed=seed + i)
        tokens += engine.last_stats.generated_tokens
        seconds += engine.last_stats.seconds
    return out, tokens, seconds


def evaluate(model, tok, task: Task, cfg: EvalConfig) -> dict:
    task = formatted(task, tok, cfg)
    examples = task.examples(cfg.split, cfg.problems, seed=cfg.seed)
    engine = Engine(rollout_copy(model, cfg.precision), tok)
    return _evaluate(engine, task, examples, cfg)


def _evaluate(engine: Engine, task: Task, examples, cfg: EvalConfig) -> dict:
    prompts = [e.prompt for e in examples]
    greedy, g_tokens, g_secs = _generate(engine, prompts, 1, SamplingParams(cfg.max_new_tokens, 0.0), cfg.seed, cfg.chunk)
    rows = []
    for ex, (s,) in zip(examples, greedy):
        v = task.verify(s.text, ex)
        rows.append({"id": ex.id, "difficulty": ex.difficulty, "thinking_tokens": s.thinking_tokens,
                     "answer_tokens": s.answer_tokens, "correct": v.status == "correct",
                     "status": v.status, "self_check": shows_self_check(s.text), "completion": s.text})
    n_ok = sum(r["correct"] for r in rows)
    lo, hi = wilson_ci(n_ok, len(rows))
    by_diff = {}
    for r in rows:
        by_diff.setdefault(r["difficulty"], []).append(r["correct"])
    summary = {
        "accuracy": n_ok / len(rows), "accuracy_ci": [lo, hi], "n_problems": len(rows),
        "mean_thinking_tokens": mean(r["thinking_tokens"] for r in rows),
        "self_check_frac": mean(r["self_check"] for r in rows),
        "invalid_frac": mean(r["status"] == "invalid" for r in rows),
        "accuracy_by_difficulty": {str(d): mean(v) for d, v in sorted(by_diff.items())},
        "generated_tokens": g_tokens, "tokens_per_s": g_tokens / g_secs if g_secs else 0.0,
    }
    if cfg.samples > 1:
        params = SamplingParams(cfg.max_new_tokens, cfg.temperature)
        sampled, s_tokens, _ = _generate(engine, prompts, cfg.samples, params, cfg.seed + 1, cfg.chunk)
        correct, voted = [], []
        think = []
        for ex, group in zip(examples, sampled):
            flags = [task.verify(s.text, ex).status == "correct" for s in group]
            correct.append(flags)
            voted.append([((answer_text(s.text) or None), ok) for s, ok in zip(group, flags)])
            think += [s.thinking_tokens for s in group]
        ks = sorted({1, 2, 4, cfg.samples} & set(range(1, cfg.samples + 1)))
        acc, plo, phi = per_problem_ci(correct)
        summary.update({
            "pass_at_k": {str(k): mean_pass_at_k(correct, k) for k in ks},
            "maj_at_k": {str(k): maj_at_k(voted, k) for k in ks},
            "sampled_accuracy": acc, "sampled_accuracy_ci": [plo, phi],
            "sampled_mean_thinking_tokens": mean(think),
            "samples_per_problem": cfg.samples, "sampled_generated_tokens": s_tokens,
        })
    return {"label": cfg.label, "config": asdict(cfg), "summary": summary, "samples": rows}


def format_summary(result: dict) -> str:
    s = result["summary"]
    lo, hi = s["accuracy_ci"]
    line = (f"{result['label']}: greedy accuracy {s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {s['n_problems']} problems, "
            f"mean thinking tokens {s['mean_thinking_tokens']:.1f}, self-check {s['self_check_frac']:.2f}")
    if "pass_at_k" in s:
        line += "\n  " + "  ".join(f"pass@{k} {v:.3f}" for k, v in s["pass_at_k"].items())
        line += "\n  " + "  ".join(f"maj@{k} {v:.3f}" for k, v in s["maj_at_k"].items())
    return line


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder eval", description=__doc__)
    ap.add_argument("recipe", nargs="?", help="TOML recipe with EvalConfig keys (top level or [eval])")
    C.add_arguments(ap, EvalConfig)
    args = ap.parse_args(argv)
    cfg = C.from_args(EvalConfig, args, args.recipe, section="eval")
    C.set_threads(cfg.threads)
    task = make_task(cfg)
    model, tok = load_model(cfg.model)
    result = evaluate(model, tok, task, cfg)
    print(format_summary(result))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {cfg.out}")
    return 0
