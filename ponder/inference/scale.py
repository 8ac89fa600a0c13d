"""`ponder scale MODEL --task T`: measured inference-time scaling on a held-out split.

1. greedy decoding, once;
2. for every thinking budget in `budgets`, one pool of `samples` completions
   per problem; from it: pass@k (= best-of-k by the verifier, an oracle),
   maj@k, adaptive consistency (`ponder.inference.strategies.adaptive_stop` on the
   pool's samples in order — the same samples a live run would draw, since
   every row has its own seeded stream) and difficulty-aware allocation;
   with a PRM also PRM-weighted vote and best-of-k by the PRM (an ORM use);
3. with a PRM, step-level beam search and DVTS at each of `search_n`;
4. the overthinking report on the unbudgeted pool.

Every entry has `strategy`, `samples`, `thinking_budget`, `accuracy` with a
95% interval, `generated_tokens` (total over the split; for pool-derived
entries, the tokens of the samples the strategy used), and the same per
difficulty level. With `--tools` (the calls run as in `ponder eval --tools`)
`generated_tokens` counts the model's tokens only, and `tool_tokens` and
`tool_calls` the tokens the tools wrote and the calls, over the same samples:
a tool's output costs a prefill, not a decode step per token. `--json FILE` writes them; the plot is accuracy against
total generated tokens on a log axis.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

from ponder.core import config as C
from ponder.engine.budget import parse_budgets
from ponder.core.io import write_json
from ponder.rl.tool_rollout import ToolGroup, maybe_tool_rollout
from ponder.tasks.spec import TaskFields, make_task
from ponder.core.config import RunFields, ConfigError, option
from ponder.engine.engine import Engine, SamplingParams
from ponder.core.stats import majority_vote, mean_ci, mean_pass_at_k, weighted_vote, wilson_ci
from ponder.inference.strategies import adaptive_stop, allocate, best_of_n, extract, step_search
from ponder.verifiers.tools import ToolFields, Toolbox


@dataclass(frozen=True)
class ScaleConfig(ToolFields, RunFields, TaskFields):
    model: str = option("tiny", "HF model folder")
    split: str = option("test", "held-out split", choices=("test", "train"))
    problems: int = option(200, "problems in the split sample")
    samples: int = option(16, "pool size per problem: the largest k of pass@k / maj@k")
    budgets: str = option("none", "thinking budgets to sweep, comma-separated: none, -1, 0, N, low, medium, high")
    temperature: float = option(1.0, "sampling temperature")
    max_new_tokens: int = option(128, "completion token limit")
    adaptive_batch: str = option("1,2", "adaptive consistency: samples per round (comma-separated to sweep)")
    adaptive_first: int = option(2, "adaptive consistency: samples in the first round")
    adaptive_threshold: str = option("0.95", "adaptive consistency: stop at this vote confidence (comma-separated)")
    probe: int = option(2, "difficulty-aware allocation: probe samples per problem")
    prm: str = option("", "PRM folder from `ponder train-prm`; enables weighted vote, PRM best-of-n and search")
    search_n: str = option("4,8,16", "chains per problem for beam search and DVTS (comma-separated)")
    search_width: int = option(4, "expansions per kept node in beam search and DVTS")
    json: str = option("", "write the JSON table here")
    plot: str = option("", "write the PNG plot here (default: next to --json)")
    chunk: int = option(64, "prompts per generation batch")

    def __post_init__(self):
        C.check_choices(self)
        ToolFields.__post_init__(self)
        if self.tools and (self.prm or self.budgets.replace(" ", "") != "none"):
            raise ConfigError(f"with tools = {self.tools!r}, ponder scale supports budgets = 'none' and no PRM "
                              f"(got budgets = {self.budgets!r}, prm = {self.prm!r}): a thinking budget would count "
                              f"each stretch between calls, and PRM scores and search do not skip tool output yet")
        if min(self.problems, self.samples, self.chunk, self.search_width, self.probe, self.adaptive_first) < 1:
            raise ConfigError("problems, samples, chunk, search_width, probe and adaptive_first must be >= 1")
        for n in _ints(self.search_n):
            if n % self.search_width or n < self.search_width:
                raise ConfigError(f"search_n {n} must be a positive multiple of search_width {self.search_width}")
        parse_budgets(self.budgets, self.max_new_tokens)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# -- entries ----------------------------------------------------------------------------------------
def accuracy_ci(hits: list[float]) -> tuple[float, float, float]:
    """(accuracy, lo, hi): Wilson 95% for 0/1 outcomes, mean ± 1.96 SE over problems for fractional ones (pass@k).

    >>> [round(x, 3) for x in accuracy_ci([1, 0, 1, 1])]
    [0.75, 0.301, 0.954]
    """
    if all(h in (0, 1) for h in hits):
        lo, hi = wilson_ci(int(sum(hits)), len(hits))
        return sum(hits) / len(hits), lo, hi
    return mean_ci([float(h) for h in hits])


def entry(strategy: str, samples: float, budget, hits: list[float], tokens: list[int], difficulty: list[int],
          tools: tuple[list[int], list[int]] | None = None, **extra) -> dict:
    """One table row: accuracy with its 95% interval and generated tokens, overall and per difficulty level;
    `tools` = (tool tokens, tool calls) per problem over the same samples adds their totals."""
    if tools is not None:
        extra = {**extra, "tool_tokens": sum(tools[0]), "tool_calls": sum(tools[1])}
    acc, lo, hi = accuracy_ci(hits)
    by = {}
    for d in sorted(set(difficulty)):
        idx = [i for i, x in enumerate(difficulty) if x == d]
        dacc, dlo, dhi = accuracy_ci([hits[i] for i in idx])
        by[str(d)] = {"n": len(idx), "accuracy": dacc, "accuracy_ci": [dlo, dhi],
                      "generated_tokens": sum(tokens[i] for i in idx)}
    return {"strategy": strategy, "samples": samples, "thinking_budget": budget, "accuracy": acc,
            "accuracy_ci": [lo, hi], "generated_tokens": sum(tokens), "by_difficulty": by, **extra}


def _k_values(n: int) -> list[int]:
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    return ks + ([n] if ks[-1] != n else [])


def token_counts(group) -> tuple[list[int], list[int], list[int]]:
    """Per sample of a group: (the model's tokens, tokens tools wrote, tool calls)."""
    if not isinstance(group, ToolGroup):
        return [len(s.ids) for s in group.samples], [0] * len(group.samples), [0] * len(group.samples)
    model = [sum(m) for m in group.loss_masks]
    return model, [len(s.ids) - k for s, k in zip(group.samples, model)], [len(c) for c in group.calls]


def pool_entries(pool, answers, correct, scores, examples, budget, cfg: ScaleConfig, groups=None) -> list[dict]:
    """Every strategy that selects from the pool's samples (taken in sampling order); `groups` (the
    pool's groups) split the token counts into the model's and the tools' when they hold tool calls."""
    diff = [ex.difficulty for ex in examples]
    counts = [token_counts(g) for g in groups] if groups is not None else None
    ntok = [c[0] for c in counts] if counts else [[len(s.ids) for s in g] for g in pool]
    with_tools = counts is not None and any(isinstance(g, ToolGroup) for g in groups)

    def tools_of(used):  # (tool tokens, tool calls) per problem over its first used[i] samples
        return ([sum(c[1][:u]) for c, u in zip(counts, used)], [sum(c[2][:u]) for c, u in zip(counts, used)]) \
            if with_tools else None
    ok = lambda a, i: a is not None and any(c for x, c in zip(answers[i], correct[i]) if x == a)
    P = len(examples)
    out = []
    for k in _k_values(cfg.samples):
        toks, tk = [sum(t[:k]) for t in ntok], tools_of([k] * P)
        # pass@k: the unbiased per-problem estimate from all the pool's samples (fractional hits).
        out.append(entry(f"pass@{k}", k, budget, [mean_pass_at_k([c], k) for c in correct], toks, diff, tk))
        out.append(entry(f"maj@{k}", k, budget, [ok(majority_vote(answers[i][:k]), i) for i in range(P)], toks, diff,
                         tk))
        if scores is not None:
            out.append(entry(f"prm_weighted@{k}", k, budget,
                             [ok(weighted_vote(answers[i][:k], scores[i][:k]), i) for i in range(P)], toks, diff))
            out.append(entry(f"prm_best_of@{k}", k, budget,
                             [ok(best_of_n(answers[i][:k], scores[i][:k]), i) for i in range(P)], toks, diff))
    for batch in _ints(cfg.adaptive_batch):
        for thr in (float(x) for x in cfg.adaptive_threshold.split(",") if x.strip()):
            used = [adaptive_stop(a, batch, thr, first=cfg.adaptive_first) for a in answers]
            out.append(entry("adaptive", mean(used), budget, [ok(majority_vote(answers[i][:used[i]]), i) for i in range(P)],
                             [sum(ntok[i][:used[i]]) for i in range(P)], diff, tools_of(used), batch=batch,
                             threshold=thr))
    # Difficulty-aware allocation at the same mean sample counts as maj@k.
    for k in _k_values(cfg.samples):
        if k <= cfg.probe:
            continue
        extra = allocate([a[:cfg.probe] for a in answers], (k - cfg.probe) * P, cfg.samples - cfg.probe)
        used = [cfg.probe + x for x in extra]
        out.append(entry("allocated", mean(used), budget, [ok(majority_vote(answers[i][:used[i]]), i) for i in range(P)],
                         [sum(ntok[i][:used[i]]) for i in range(P)], diff, tools_of(used), probe=cfg.probe,
                         target_samples=k))
    return out


# -- bar --------------------------------------------------------------------------------------------
def at_tokens(points: list[tuple[float, float]], tokens: float) -> float:
    """Accuracy of a (tokens, accuracy) curve at `tokens`, linear in log tokens; clamped at the ends.

    >>> round(at_tokens([(100, 0.5), (400, 0.7)], 200), 6)
    0.6
    """
    pts = sorted(points)
    if tokens <= pts[0][0]:
        return pts[0][1]
    for (t0, a0), (t1, a1) in zip(pts, pts[1:]):
        if tokens <= t1:
            w = (math.log(tokens) - math.log(t0)) / (math.log(t1) - math.log(t0))
            return a0 + w * (a1 - a0)
    return pts[-1][1]


def hard_levels(levels: list[int]) -> list[int]:
    """The harder half of the difficulty levels (the upper half; the middle one goes to the easy side).

    >>> hard_levels([1, 2, 3, 4, 5])
    [4, 5]
    """
    levels = sorted(set(levels))
    return levels[(len(levels) + 1) // 2:] or levels[-1:]


def bar(entries: list[dict], samples: int) -> dict:
    """The issue's three checks on the unbudgeted pool, computed from the table."""
    rows = [e for e in entries if e["thinking_budget"] is None]
    get = lambda name: next((e for e in rows if e["strategy"] == name), None)
    p1, maj = get("pass@1"), get(f"maj@{samples}")
    out = {}
    if p1 and maj:
        out["maj_minus_pass1"] = maj["accuracy"] - p1["accuracy"]
        out["maj_beats_pass1_by_10"] = out["maj_minus_pass1"] >= 0.10
        adaptive = [e for e in rows if e["strategy"] == "adaptive"]
        for e in adaptive:
            e["token_share_of_maj"] = e["generated_tokens"] / maj["generated_tokens"]
            e["accuracy_minus_maj"] = e["accuracy"] - maj["accuracy"]
        good = [e for e in adaptive if e["accuracy_minus_maj"] >= -0.01 and e["token_share_of_maj"] <= 0.40]
        out["adaptive"] = [{k: e[k] for k in ("batch", "threshold", "samples", "accuracy", "token_share_of_maj",
                                              "accuracy_minus_maj")} for e in adaptive]
        out["adaptive_meets_bar"] = bool(good)
    search = [e for e in rows if e["strategy"] in ("beam_search", "dvts")]
    if search:
        levels = hard_levels([int(d) for d in search[0]["by_difficulty"]])
        hard = lambda e, key: sum(e["by_difficulty"][str(d)][key] * (e["by_difficulty"][str(d)]["n"] if key == "accuracy" else 1)
                                  for d in levels)
        n_hard = sum(search[0]["by_difficulty"][str(d)]["n"] for d in levels)
        curve = [(hard(e, "generated_tokens"), hard(e, "accuracy") / n_hard) for e in rows if e["strategy"].startswith("maj@")]
        out["hard_levels"] = levels
        out["search_vs_majority_on_hard"] = []
        for e in search:
            t, a = hard(e, "generated_tokens"), hard(e, "accuracy") / n_hard
            m = at_tokens(curve, t)
            out["search_vs_majority_on_hard"].append(
                {"strategy": e["strategy"], "samples": e["samples"], "hard_tokens": t, "hard_accuracy": a,
                 "majority_at_equal_tokens": m, "beats": a > m})
        out["search_beats_majority_on_hard"] = any(x["beats"] for x in out["search_vs_majority_on_hard"])
    return out


# -- driver -----------------------------------------------------------------------------------------
def scale(cfg: ScaleConfig, log=print) -> dict:
    """Every strategy and setting on the held-out split. With `cfg.json` set, the table so
    far is written after each budget and search setting (`"complete": false` until the end),
    so a long sweep that is stopped keeps what it measured."""
    from ponder.models.model import load_model
    C.set_threads(cfg.threads)
    model, tok = load_model(cfg.model, device=cfg.device)
    task = make_task(cfg, tok)  # the same prompts as train and eval
    engine = Engine(model, tok)
    toolbox = Toolbox.from_fields(cfg)
    prm = None
    if cfg.prm:
        from ponder.inference.prm import PRM
        prm = PRM.load(cfg.prm, model, tok)
    examples = task.examples(cfg.split, cfg.problems, seed=cfg.seed)
    diff = [ex.difficulty for ex in examples]
    greedy = maybe_tool_rollout(engine, task, examples, 1, SamplingParams(cfg.max_new_tokens, 0.0), cfg.seed, toolbox,
                                chunk=cfg.chunk).groups
    counts = [token_counts(g) for g in greedy]
    tools = ([c[1][0] for c in counts], [c[2][0] for c in counts]) if toolbox else None
    entries = [entry("greedy", 1, None, [g.correct[0] for g in greedy], [c[0][0] for c in counts], diff, tools)]
    log(f"greedy {entries[-1]['accuracy']:.3f}")
    result = {"config": asdict(cfg), "complete": False, "entries": entries}
    save = (lambda: write_json(cfg.json, result)) if cfg.json else (lambda: None)
    save()
    for budget in parse_budgets(cfg.budgets, cfg.max_new_tokens):
        entries += budget_entries(engine, task, examples, prm, budget, cfg, tok, result, log, toolbox)
        save()
    if prm is not None:
        for e in search_entries(engine, task, examples, prm, cfg, diff):
            entries.append(e)
            log(f"{e['strategy']} n={e['samples']}: {e['accuracy']:.3f} with {e['generated_tokens']} tokens")
            save()
    result["bar"] = bar(entries, cfg.samples)
    result["complete"] = True
    save()
    return result


def budget_entries(engine, task, examples, prm, budget, cfg: ScaleConfig, tok, result: dict, log,
                   toolbox: Toolbox | None = None) -> list[dict]:
    """Pass@1, voting, adaptive and PRM-weighted rows of one sampled pool at one thinking budget."""
    from ponder.inference.overthinking import report, traces_of
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature, thinking_budget=budget)
    groups = maybe_tool_rollout(engine, task, examples, cfg.samples, params, cfg.seed + 1, toolbox,
                                chunk=cfg.chunk).groups
    pool = [list(g.samples) for g in groups]
    correct = [g.correct for g in groups]
    answers = [[extract(s) for s in g] for g in pool]
    scores = None
    if prm is not None:
        flat = prm.score([list(s.prompt_ids) for g in pool for s in g],
                         [[t for t in s.ids if t != engine.eos_id] for g in pool for s in g])
        scores = [flat[i * cfg.samples:(i + 1) * cfg.samples] for i in range(len(pool))]
    rows = pool_entries(pool, answers, correct, scores, examples, budget, cfg, groups)
    think = [s.thinking_tokens for g in pool for s in g]
    for e in rows:
        e["mean_thinking_tokens"] = mean(think)
        e["max_thinking_tokens"] = max(think)
    log(f"budget {budget}: " + "  ".join(f"{e['strategy']} {e['accuracy']:.3f}" for e in rows
                                         if e["strategy"] in ("pass@1", f"maj@{cfg.samples}", "adaptive")))
    if budget is None:
        result["overthinking"] = report(traces_of(pool, examples, correct, tok))
    return rows


def search_entries(engine, task, examples, prm, cfg: ScaleConfig, diff: list[int]):
    """PRM-guided beam search and DVTS at each `search_n`, one table row at a time."""
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature)
    prompts = [ex.prompt for ex in examples]
    for n in _ints(cfg.search_n):
        for diverse, name in ((False, "beam_search"), (True, "dvts")):
            if diverse and n == cfg.search_width:
                continue  # one subtree: DVTS is beam search with a single beam, already measured
            res = []
            for i in range(0, len(prompts), cfg.chunk):
                res += step_search(engine, prm, prompts[i:i + cfg.chunk], n, cfg.search_width, params,
                                   cfg.seed + 2 + i, diverse=diverse)
            # The verifier reads a completion; the chosen answer is put back behind a closed thinking.
            hits = [r.answer is not None and task.verify(f"<think></think>{r.answer}", ex).status == "correct"
                    for r, ex in zip(res, examples)]
            yield entry(name, n, None, hits, [r.tokens for r in res], diff, width=cfg.search_width,
                        leaves=mean(r.samples for r in res), prm_scored_tokens=sum(r.scored_tokens for r in res))


def plot(entries: list[dict], path: str | Path, title: str) -> None:
    """Accuracy against total generated tokens (log x).

    Left: every strategy without a thinking budget, one line per family.
    Right: maj@k (solid) and pass@k (dashed) for each thinking budget.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    families: dict[str, list[tuple[float, float]]] = {}
    for e in entries:
        if e["thinking_budget"] is None:
            families.setdefault(e["strategy"].split("@")[0], []).append((e["generated_tokens"], e["accuracy"]))
    markers = "osD^v<>ph*"
    for n, (name, pts) in enumerate(sorted(families.items())):
        pts.sort()
        style = "" if name in ("adaptive", "greedy") else "-"  # adaptive settings are points, not a curve
        left.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=markers[n % len(markers)], ms=4,
                  color=plt.cm.tab10(n % 10), label=name)
    budgets = sorted({e["thinking_budget"] for e in entries}, key=lambda b: (b is not None, b if b is not None else 0))
    for n, budget in enumerate(budgets):
        for family, dash in (("maj", "-"), ("pass", "--")):
            pts = sorted((e["generated_tokens"], e["accuracy"]) for e in entries
                         if e["thinking_budget"] == budget and e["strategy"].startswith(family + "@"))
            if pts:
                right.plot([p[0] for p in pts], [p[1] for p in pts], dash, marker="o", ms=3, color=plt.cm.tab10(n % 10),
                           label=f"{family}@k, budget {'none' if budget is None else budget}")
    for ax, name in ((left, "strategies (no thinking budget)"), (right, "thinking budgets")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only; minor ones overlap
        ax.set_xlabel("generated tokens (total over the split)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    left.set_ylabel("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(result: dict) -> str:
    tools = any("tool_tokens" in e for e in result["entries"])
    head = f" {'tool tokens':>11s} {'calls':>6s}" if tools else ""
    lines = [f"{'strategy':18s} {'budget':>6s} {'samples':>7s} {'accuracy':>8s} {'95% CI':>15s} {'tokens':>9s}" + head]
    for e in result["entries"]:
        lo, hi = e["accuracy_ci"]
        tail = f" {e.get('tool_tokens', 0):11d} {e.get('tool_calls', 0):6d}" if tools else ""
        lines.append(f"{e['strategy']:18s} {e['thinking_budget']!s:>6s} {e['samples']:7.2f} {e['accuracy']:8.3f} "
                     f"[{lo:.3f}, {hi:.3f}] {e['generated_tokens']:9d}" + tail)
    return "\n".join(lines) + "\nbar: " + json.dumps(result["bar"], indent=1)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_path", nargs="?", help="HF model folder (same as --model)")
    C.add_arguments(ap, ScaleConfig)
    args = ap.parse_args(argv)
    cfg = C.from_args(ScaleConfig, args, model=args.model_path)
    result = scale(cfg)
    print(format_table(result))
    if cfg.json:
        print(f"wrote {cfg.json}")
    png = cfg.plot or (str(Path(cfg.json).with_suffix(".png")) if cfg.json else "")
    if png:
        plot(result["entries"], png, f"{cfg.model} on {cfg.task} ({cfg.problems} problems, T = {cfg.temperature})")
        print(f"wrote {png}")
    return 0
