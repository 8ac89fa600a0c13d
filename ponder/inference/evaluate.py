"""`ponder eval`: accuracy and thinking length on a held-out split.

Greedy decoding gives the headline accuracy (with a Wilson 95% interval),
mean thinking tokens and the self-check share; `samples` > 1 adds sampled
pass@1, unbiased pass@k (Codex estimator) and maj@k (with a per-problem 95%
interval).

With `tools` (`ponder.verifiers.tools.ToolFields`, e.g. `--tools calculator`) both passes
generate as RL rollouts do with tools (`ponder.rl.tool_rollout`): a call the model writes
is run and its `<output>…</output>` appended before decoding goes on; each row then
records its calls, and the summary gives tool calls, failed calls and tool seconds per
completion (greedy, by difficulty, and sampled). Without tools nothing changes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

from ponder.core import config as C
from ponder.rl.rollout import Group
from ponder.rl.tool_rollout import ToolGroup, maybe_tool_rollout, tool_metrics
from ponder.tasks.spec import TaskFields, build_task, formatted, make_task
from ponder.core.config import RunFields, ConfigError, check_choices, option
from ponder.engine.engine import Engine, SamplingParams, rollout_copy
from ponder.core.metrics import shows_self_check
from ponder.models.model import load_model
from ponder.core.stats import maj_at_k, mean_pass_at_k, per_problem_ci, wilson_ci
from ponder.core.think import answer_text
from ponder.tasks.base import SPLITS, Task
from ponder.verifiers.tools import ToolFields, Toolbox


@dataclass(frozen=True)
class EvalConfig(ToolFields, RunFields, TaskFields):
    model: str = option("tiny", "HF model folder ('tiny' = the built-in base)")
    data: str = option("", "evaluate on every line of this JSONL file instead (the task's format: prompt = the "
                       "raw document, answer = the gold value), with the task's grader and template")
    split: str = option("test", "which split to evaluate", choices=SPLITS)
    problems: int = option(200, "number of problems (with `data`: the file's first N lines)")
    samples: int = option(8, "samples per problem for pass@k / maj@k (1 = greedy only)")
    temperature: float = option(1.0, "temperature of the sampled pass")
    max_new_tokens: int = option(128, "completion token limit")
    label: str = option("eval", "name of this evaluation in reports")
    out: str = option("", "write the JSON result here (default: print the summary only)")
    chunk: int = option(64, "prompts per generation batch")
    precision: str = option("fp32", "weights generation runs with (bf16: a bf16 copy; faster on AMX CPUs)",
                            choices=("fp32", "bf16"))

    def __post_init__(self):
        check_choices(self)
        ToolFields.__post_init__(self)
        if self.problems < 1 or self.samples < 1 or self.chunk < 1:
            raise ConfigError(f"problems, samples and chunk must be >= 1; got {self.problems}, {self.samples}, {self.chunk}")
        if self.data and not self.data.endswith(".jsonl"):
            raise ConfigError(f"EvalConfig.data = {self.data!r} must be a .jsonl file of {{prompt, answer}} lines "
                              f"(the task's format), evaluated with the task's grader and template")


def eval_task(cfg: EvalConfig) -> Task:
    """The task to evaluate: the config's task, or with `data` every line of that file
    under the task's grader and template."""
    if not cfg.data:
        return make_task(cfg)
    task = build_task(cfg.data, "", cfg.grader, cfg.template)
    lines = len(task.examples("all", 1 << 30))
    if lines > cfg.problems:
        print(f"note: evaluating the first {cfg.problems} of the {lines} lines of {cfg.data} (--problems)")
    return task


def evaluate(model, tok, task: Task, cfg: EvalConfig) -> dict:
    task = formatted(task, tok, cfg)
    split = "all" if cfg.data else cfg.split  # a file of held-out documents: every line
    examples = task.examples(split, cfg.problems, seed=cfg.seed)
    engine = Engine(rollout_copy(model, cfg.precision), tok)
    return _evaluate(engine, task, examples, cfg, Toolbox.from_fields(cfg))


def _row(group: Group) -> dict:
    (s,), (v,) = group.samples, group.verdicts
    ex = group.example
    row = {"id": ex.id, "difficulty": ex.difficulty, "thinking_tokens": s.thinking_tokens,
           "answer_tokens": s.answer_tokens, "correct": v.status == "correct", "score": v.score,
           "status": v.status, "reason": v.reason, "self_check": shows_self_check(s.text),
           "truncated": s.finish == "length", "completion": s.text, "info": info_labels(ex)}
    if isinstance(group, ToolGroup):  # tools on: the row's calls (the completion holds their outputs)
        (calls,), (mask,) = group.calls, group.loss_masks
        row.update(tool_calls=len(calls), tool_errors=sum(c.error for c in calls),
                   tool_seconds=sum(c.seconds for c in calls), tool_tokens=len(mask) - sum(mask),
                   calls=[{"tool": c.tag, "argument": c.argument, "output": c.output, "error": c.error}
                          for c in calls])
    return row


def tool_summary(groups: list[Group], rows: list[dict]) -> dict:
    """The greedy pass's tool metrics (`tool_metrics`, per completion) and calls per completion by difficulty."""
    by_difficulty = breakdown_mean(rows, lambda r: r["difficulty"], "tool_calls")
    return {**tool_metrics(groups), "tool_calls_by_difficulty": by_difficulty}


def breakdown_mean(rows: list[dict], key, field: str) -> dict:
    """value -> the mean of `field` over the rows grouped by `key(row)`, numeric values in order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(str(key(r)), []).append(r[field])
    order = sorted(groups, key=lambda v: (0, int(v)) if v.lstrip("-").isdigit() else (1, v))
    return {v: mean(groups[v]) for v in order}


# An `info` field becomes a per-value breakdown when it holds short labels (layout, source...)
MAX_LABEL_CHARS, MAX_LABELS = 40, 30


def info_labels(ex) -> dict:
    """The example's short scalar `info` fields (labels such as a layout), for per-value metrics."""
    return {k: v for k, v in ex.info.items() if k != "document" and isinstance(v, (str, int, bool))
            and len(str(v)) <= MAX_LABEL_CHARS}


def breakdown(rows: list[dict], key) -> dict:
    """value -> {n, accuracy, accuracy_ci, mean_score} over the rows, grouped by `key(row)`."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(str(key(r)), []).append(r)
    out = {}
    for value, rs in sorted(groups.items()):
        ok = sum(r["correct"] for r in rs)
        out[value] = {"n": len(rs), "accuracy": ok / len(rs), "accuracy_ci": list(wilson_ci(ok, len(rs))),
                      "mean_score": mean(r["score"] for r in rs)}
    return out


def greedy_summary(rows: list[dict], tokens: int, seconds: float) -> dict:
    n_ok = sum(r["correct"] for r in rows)
    lo, hi = wilson_ci(n_ok, len(rows))
    fields = sorted({k for r in rows for k in r["info"]})
    by_info = {k: breakdown([r for r in rows if k in r["info"]], lambda r, k=k: r["info"][k]) for k in fields}
    return {
        "accuracy": n_ok / len(rows), "accuracy_ci": [lo, hi], "n_problems": len(rows),
        "mean_score": mean(r["score"] for r in rows),
        "mean_thinking_tokens": mean(r["thinking_tokens"] for r in rows),
        "self_check_frac": mean(r["self_check"] for r in rows),
        "invalid_frac": mean(r["status"] == "invalid" for r in rows),
        "truncated_frac": mean(r["truncated"] for r in rows),
        "accuracy_by_difficulty": {d: v["accuracy"] for d, v in
                                   sorted(breakdown(rows, lambda r: r["difficulty"]).items(), key=lambda x: int(x[0]))},
        "by_info": {k: v for k, v in by_info.items() if len(v) <= MAX_LABELS},
        "generated_tokens": tokens, "tokens_per_s": tokens / seconds if seconds else 0.0,
    }


def sampled_summary(groups: list[Group], n: int, tokens: int) -> dict:
    correct = [g.correct for g in groups]
    voted = [[((answer_text(s.text) or None), ok) for s, ok in zip(g.samples, g.correct)] for g in groups]
    ks = sorted({1, 2, 4, n} & set(range(1, n + 1)))
    acc, plo, phi = per_problem_ci(correct)
    return {
        "pass_at_k": {str(k): mean_pass_at_k(correct, k) for k in ks},
        "maj_at_k": {str(k): maj_at_k(voted, k) for k in ks},
        "sampled_accuracy": acc, "sampled_accuracy_ci": [plo, phi],
        "sampled_mean_thinking_tokens": mean(s.thinking_tokens for g in groups for s in g.samples),
        "samples_per_problem": n, "sampled_generated_tokens": tokens,
    }


def _evaluate(engine: Engine, task: Task, examples, cfg: EvalConfig, toolbox: Toolbox | None = None) -> dict:
    greedy = maybe_tool_rollout(engine, task, examples, 1, SamplingParams(cfg.max_new_tokens, 0.0), cfg.seed,
                                toolbox, chunk=cfg.chunk)
    rows = [_row(g) for g in greedy.groups]
    summary = greedy_summary(rows, greedy.generated_tokens, greedy.seconds)
    if toolbox is not None:
        summary.update(tool_summary(greedy.groups, rows))
    if cfg.samples > 1:
        params = SamplingParams(cfg.max_new_tokens, cfg.temperature)
        sampled = maybe_tool_rollout(engine, task, examples, cfg.samples, params, cfg.seed + 1, toolbox,
                                     chunk=cfg.chunk)
        summary.update(sampled_summary(sampled.groups, cfg.samples, sampled.generated_tokens))
        if toolbox is not None:
            summary.update({f"sampled_{k}": v for k, v in tool_metrics(sampled.groups).items()})
    return {"label": cfg.label, "config": asdict(cfg), "summary": summary, "samples": rows}


def format_summary(result: dict) -> str:
    s = result["summary"]
    lo, hi = s["accuracy_ci"]
    line = (f"{result['label']}: greedy accuracy {s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {s['n_problems']} problems, "
            f"mean thinking tokens {s['mean_thinking_tokens']:.1f}, self-check {s['self_check_frac']:.2f}")
    if "pass_at_k" in s:
        line += "\n  " + "  ".join(f"pass@{k} {v:.3f}" for k, v in s["pass_at_k"].items())
        line += "\n  " + "  ".join(f"maj@{k} {v:.3f}" for k, v in s["maj_at_k"].items())
    if "tool_calls" in s:
        line += (f"\n  tools: {s['tool_calls']:.2f} calls, {s['tool_errors']:.2f} failed, "
                 f"{s['tool_seconds']:.3f} s per completion (greedy)")
    return line


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder eval", description=__doc__)
    ap.add_argument("recipe", nargs="?", help="TOML recipe with EvalConfig keys (top level or [eval])")
    C.add_arguments(ap, EvalConfig)
    args = ap.parse_args(argv)
    cfg = C.from_args(EvalConfig, args, args.recipe, section="eval")
    C.set_threads(cfg.threads)
    task = eval_task(cfg)  # a bad task, grader or data file fails before the model loads
    Toolbox.from_fields(cfg)  # and so does a tool that cannot run here (python without a sandbox)
    model, tok = load_model(cfg.model, device=cfg.device)
    result = evaluate(model, tok, task, cfg)
    print(format_summary(result))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {cfg.out}")
    return 0
