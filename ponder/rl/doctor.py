"""`ponder doctor RUN_DIR [--json]`: why a run is not learning, in plain words.

Reads what a run leaves behind and names the classic ways GRPO-style training
silently fails, with the steps where it happened and what to change:

  no_signal         every group scored the same (reward constant at 0 or 1): advantages, loss
                    and gradient are 0
  zero_variance     most groups uninformative for a long stretch
  entropy_collapse  the policy became (near-)deterministic: no exploration left
  truncation        completions running into max_new_tokens
  invalid_verdicts  the checker failing (verdict `invalid`)
  kl_blowup         KL to the starting model or gradient norms exploding
  length_collapse   thinking abandoned while accuracy falls
  reward_hacking    train reward rising while held-out accuracy does not
  plateau           reward stopped improving well below the top

Files read (RUN_DIR is a `ponder train --out` folder, a pipeline stage folder, or a
quickstart folder; a pipeline folder is diagnosed stage by stage):
  metrics.jsonl     one JSON object per step (RunLog); a step logged twice (a resumed run)
                    keeps its last line; missing keys (older runs) skip their check with an
                    `info` finding; NaN values are ignored
  config.json       the run's RLConfig (max_new_tokens, kl_coef, lr, ...), or rl/config.json
  held-out accuracy, for reward_hacking, from any of:
    - `eval_accuracy` in metrics.jsonl rows (a periodic held-out eval logged with the step)
    - RUN_DIR/eval/*.json (`ponder eval --out RUN_DIR/eval/NAME.json`; quickstart writes
      before.json and after.json): the step is the file's "step" key, else from its label or
      file name: `step-N` / `step_N` / `stepN` = step N; a word before/base/initial/init/start
      = step 0; after/final/trained/end/last = the last step
    - RUN_DIR/eval.json of a pipeline stage (the trained model, = the last step), with the
      parent stage's eval.json (manifest.json inputs.parent) as step 0

Severity: `problem` = the run is (or was, for those steps) not learning what it should;
`warning` = worth a look; `info` = context or a check that could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import mean, median

from ponder.core.config import ConfigError

SEVERITIES = ("problem", "warning", "info")
CODES = ("no_signal", "zero_variance", "entropy_collapse", "truncation", "invalid_verdicts", "kl_blowup",
         "length_collapse", "reward_hacking", "plateau")
# Step-row keys doctor reads; a non-number there is a malformed file (NaN is allowed: skipped).
METRIC_KEYS = ("reward", "accuracy", "zero_var_frac", "entropy", "kl", "grad_norm", "think_len_mean",
               "resp_len_mean", "resp_len_max", "trunc_rate", "invalid_frac", "loss", "groups_used",
               "eval_accuracy")
EPS = 1e-9

# ---- thresholds (each tuned so the quickstart's own 60-step run, whose per-step means are over
# 128 samples, i.e. ~0.04 noise, stays clear of `problem`, while the failure is unmistakable)
SMOOTH_MIN, SMOOTH_MAX = 3, 10  # moving-average window: ~n/10 steps, so one noisy step decides nothing
MIN_STEPS = 5  # fewer steps than this: no trend can be told from noise
# no_signal: all-zero-variance steps in a row; 3 rules out a lucky batch (the quickstart has one
# such step, 57 of 60, all 16 groups solved), 10% of the run makes it matter.
NO_SIGNAL_MIN_STEPS, NO_SIGNAL_MIN_SHARE = 3, 0.10
# zero_variance: smoothed share of groups whose rewards all agree. The quickstart ends near 0.7
# (the task gets easy; its longest smoothed stretch >= 0.8 is 1 step): warn from 0.6, call it a
# problem from 0.8 (under 1 group in 5 teaches).
ZERO_VAR_WARN, ZERO_VAR_PROBLEM = 0.60, 0.80
ZERO_VAR_MIN_STEPS, ZERO_VAR_MIN_SHARE = 5, 0.25  # "a long stretch": a quarter of the run
# entropy_collapse: entropy relative to the first steps'. The quickstart settles at ~15% of
# its start while accuracy climbs to ~0.9 (sharpening on a task it solves): an info. Below 5% (or
# under 1e-3 nats/token) sampling is greedy in all but name; below 25% with accuracy under 0.8 the
# model stopped exploring before it solved the task.
ENTROPY_LOW_RATIO, ENTROPY_SEVERE_RATIO, ENTROPY_FLOOR = 0.25, 0.05, 1e-3
ENTROPY_SOLVED_ACC = 0.80
LOW_STRETCH_MIN_SHARE = 0.10  # a low stretch must last 10% of the run (at least 3 steps)
# truncation: share of completions that hit max_new_tokens. A truncated answer scores 0 however
# good its reasoning was; 10% sustained skews the advantages. Warn from 3% if rising (creeping).
TRUNC_PROBLEM, TRUNC_WARN = 0.10, 0.03
TRUNC_MEAN_LEN = 0.9  # without trunc_rate: a mean length at 90% of the limit means most hit it
# invalid_verdicts: a working checker never fails (the quickstart: 0); 2% sustained (or one step at 25%) means the
# checker, not the model, is shaping the run; any failure at all is worth a warning.
INVALID_PROBLEM, INVALID_SPIKE = 0.02, 0.25
# kl_blowup: k3 KL per token to the starting model. The quickstart's smoothed KL peaks at 0.045
# (single steps 0.07); 0.5 nats/token, 10x that, means the policy is far from where it started.
KL_WARN, KL_PROBLEM = 0.2, 0.5
# gradient norm (before clipping): a step 10x the median of the 10 before it is a spike; the last
# steps' median 10x the first steps' is a runaway. The quickstart varies within ~3x.
GRAD_SPIKE_RATIO, GRAD_HISTORY, GRAD_SPIKES_PROBLEM, GRAD_GROWTH = 10.0, 10, 3, 10.0
# length_collapse: thinking fell to half its peak (peak of at least 8 tokens, so a model that never
# thought is not "collapsing") while smoothed accuracy fell by 0.05 or more.
LENGTH_DROP_RATIO, LENGTH_MIN_PEAK, LENGTH_ACC_DROP = 0.5, 8.0, 0.05
# reward_hacking: train reward rose by 0.1 or more while held-out accuracy gained under a quarter
# of that (the same model, same task: real learning shows up in both).
HACK_MIN_TRAIN_GAIN, HACK_HELDOUT_SHARE = 0.10, 0.25
# plateau: the fitted reward gain over the last stretch is under 0.02 (half the per-step noise)
# for 20+ steps and half the run, while accuracy sits under 0.8 (the quickstart levels at ~0.88).
PLATEAU_MIN_STEPS, PLATEAU_SHARE, PLATEAU_MIN_GAIN, PLATEAU_SOLVED = 20, 0.5, 0.02, 0.80
PLATEAU_STARTS = 50  # candidate stall starts tried (keeps the search linear-ish on long runs)
# "flat" also means the stretch's thirds agree: within 0.05, or 3 standard errors of a third's mean
# when steps are noisier (small batches), so a rise followed by a fall is not called flat.
PLATEAU_THIRDS_TOL, PLATEAU_THIRDS_SE = 0.05, 3.0

EVAL_STEP = re.compile(r"step[-_]?(\d+)$")
# Words in an eval file's label or name that place it at the start or at the end of the run.
EVAL_START_WORDS = ("before", "base", "initial", "init", "start")
EVAL_END_WORDS = ("after", "final", "trained", "end", "last")


class DoctorError(ConfigError):
    """A run directory doctor cannot read; the message names the file (and line)."""


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    steps: tuple[int, int] | None
    explanation: str
    suggestion: str = ""
    stage: str = ""  # pipeline stage the finding is about ("" for a single run)

    def to_json(self) -> dict:
        out = {"code": self.code, "severity": self.severity, "steps": list(self.steps) if self.steps else None,
               "explanation": self.explanation, "suggestion": self.suggestion}
        if self.stage:
            out["stage"] = self.stage
        return out


@dataclass(frozen=True)
class HeldOut:
    step: int
    accuracy: float
    n: int | None
    source: str


@dataclass(frozen=True)
class Run:
    rows: dict[int, dict]  # step -> its (last) row
    config: dict = field(default_factory=dict)
    held_out: tuple[HeldOut, ...] = ()
    notes: tuple[Finding, ...] = ()  # info findings from reading the files

    @property
    def steps(self) -> list[int]:
        return sorted(self.rows)


# ---------------------------------------------------------------- reading

def _number(v, keep_inf: bool = False) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if math.isnan(v) or (math.isinf(v) and not keep_inf):
        return None
    return float(v)


def parse_metrics(text: str, name: str = "metrics.jsonl") -> tuple[dict[int, dict], list[Finding]]:
    """Rows by step (a step logged twice keeps its last line) and info notes.

    A torn last line (a run killed mid-write: no newline after it) is skipped with a note;
    any other bad line raises DoctorError naming the file and line.
    """
    rows: dict[int, dict] = {}
    notes: list[Finding] = []
    lines = text.splitlines()
    last_real = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
    prev = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{name} line {i + 1}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last_real and not text.endswith("\n"):
                notes.append(Finding("read", "info", None, f"{where} is incomplete (the run was stopped while "
                                     "writing it); ignored"))
                continue
            raise DoctorError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DoctorError(f"{where}: a step must be a JSON object, got {type(row).__name__}")
        step = row.get("step", prev + 1)
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise DoctorError(f"{where}: \"step\" is {step!r}; it must be a whole number >= 0")
        for k in METRIC_KEYS:
            v = row.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise DoctorError(f"{where}: {k!r} is {v!r}; it must be a number (or NaN)")
        rows[step] = row  # later lines win: a resumed run re-logs the steps it redid
        prev = step
    return rows, notes


def _read_json(path: Path, label: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DoctorError(f"{label} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DoctorError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_config(run_dir: Path) -> dict:
    """The run's RLConfig as a dict: config.json, rl/config.json (quickstart) or manifest.json's config."""
    for rel in ("config.json", "rl/config.json"):
        p = run_dir / rel
        if p.is_file():
            cfg = _read_json(p, rel)
            if not isinstance(cfg, dict):
                raise DoctorError(f"{rel} line 1: must be a JSON object of config keys")
            return cfg
    m = run_dir / "manifest.json"
    if m.is_file():
        man = _read_json(m, "manifest.json")
        return man.get("config") or {} if isinstance(man, dict) else {}
    return {}


def _eval_accuracy(path: Path, label: str) -> tuple[dict, float, int | None]:
    ev = _read_json(path, label)
    summary = ev.get("summary") if isinstance(ev, dict) else None
    acc = _number(summary.get("accuracy")) if isinstance(summary, dict) else None
    if acc is None:
        raise DoctorError(f"{label}: no number at summary.accuracy (write it with `ponder eval --out`)")
    n = summary.get("n_problems")
    return ev, acc, n if isinstance(n, int) and not isinstance(n, bool) else None


def _eval_step(ev: dict, stem: str, last_step: int) -> int | None:
    step = ev.get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    for name in (str(ev.get("label") or ""), stem):
        name = name.lower()
        m = EVAL_STEP.search(name)
        if m:
            return int(m.group(1))
        words = set(re.split(r"[^a-z0-9]+", name))
        if words & set(EVAL_START_WORDS):
            return 0
        if words & set(EVAL_END_WORDS):
            return last_step
    return None


def read_held_out(run_dir: Path, last_step: int) -> tuple[list[HeldOut], list[Finding]]:
    """Held-out accuracies from RUN_DIR/eval/*.json and a pipeline stage's eval.json (+ its parent's)."""
    points, notes = [], []
    eval_dir = run_dir / "eval"
    for p in sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []:
        label = f"eval/{p.name}"
        ev, acc, n = _eval_accuracy(p, label)
        step = _eval_step(ev, p.stem, last_step)
        if step is None:
            notes.append(Finding("read", "info", None, f"{label}: cannot tell which step it evaluates; ignored",
                                 "name it before.json, after.json or step-N.json, or add a \"step\" key"))
            continue
        points.append(HeldOut(step, acc, n, label))
    stage_eval = run_dir / "eval.json"
    if stage_eval.is_file():
        _, acc, n = _eval_accuracy(stage_eval, "eval.json")
        points.append(HeldOut(last_step, acc, n, "eval.json"))
        parent = _parent_eval(run_dir)
        if parent is not None:
            _, pacc, pn = _eval_accuracy(parent, f"{parent.parent.name}/eval.json")
            points.append(HeldOut(0, pacc, pn, f"{parent.parent.name}/eval.json (parent stage)"))
    return points, notes


def _parent_eval(stage_dir: Path) -> Path | None:
    m = stage_dir / "manifest.json"
    man = _read_json(m, "manifest.json") if m.is_file() else None
    parent = ((man or {}).get("inputs") or {}).get("parent") if isinstance(man, dict) else None
    model = parent.get("model") if isinstance(parent, dict) else None
    if not isinstance(model, str):
        return None
    p = Path(model).parent / "eval.json"
    return p if p.is_file() and p.parent.resolve() != stage_dir.resolve() else None


def metrics_path(run_dir: Path) -> Path:
    for rel in ("metrics.jsonl", "rl/metrics.jsonl"):
        if (run_dir / rel).is_file():
            return run_dir / rel
    raise DoctorError(f"{str(run_dir / 'metrics.jsonl')!r} not found; give the --out folder of `ponder train` "
                      "(or of a quickstart, or a pipeline run or one of its rl stages)")


def load_run(run_dir: str | Path) -> Run:
    """Everything doctor needs from one run directory; DoctorError on a missing or malformed file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DoctorError(f"run directory {str(run_dir)!r} {'is not a directory' if run_dir.exists() else 'does not exist'}")
    path = metrics_path(run_dir)
    name = str(path.relative_to(run_dir))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DoctorError(f"{name} line {line}: not UTF-8 text ({e.reason})") from None
    rows, notes = parse_metrics(text, name)
    if not rows:
        raise DoctorError(f"{name} has no steps (the run has not finished a step yet)")
    if not any("reward" in r for r in rows.values()):
        raise DoctorError(f"{name} has no \"reward\" in any step: not an RL run (doctor reads `ponder train` runs; "
                          "an SFT run logs only its loss)")
    config = read_config(run_dir)
    held, more = read_held_out(run_dir, max(rows))
    held += [HeldOut(s, v, None, f"{name} eval_accuracy") for s, r in sorted(rows.items())
             if (v := _number(r.get("eval_accuracy"))) is not None]
    return Run(rows=rows, config=config, held_out=tuple(held), notes=tuple(notes + more))


# ---------------------------------------------------------------- series helpers (pure)

def series(run: Run, key: str, keep_inf: bool = False) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric in step order, skipping steps where it is missing or NaN."""
    xs, ys = [], []
    for s in run.steps:
        v = _number(run.rows[s].get(key), keep_inf)
        if v is not None:
            xs.append(s)
            ys.append(v)
    return xs, ys


def window(n: int) -> int:
    """Smoothing window for a series of n points: about n/10, within [SMOOTH_MIN, SMOOTH_MAX]."""
    return max(1, min(n, max(SMOOTH_MIN, min(SMOOTH_MAX, n // 10))))


def rolling(values: list[float], w: int) -> list[float]:
    """Centred moving average (shorter at the ends).

    >>> rolling([0.0, 0.0, 3.0, 0.0, 0.0], 3)
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    h = w // 2
    return [mean(values[max(0, i - h): i + (w - h)]) for i in range(len(values))]


def longest_run(flags: list[bool]) -> tuple[int, int] | None:
    """(first, last) index of the longest run of True, the earliest on ties; None if no True.

    >>> longest_run([False, True, True, False, True]), longest_run([False])
    ((1, 2), None)
    """
    best, start = None, None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if best is None or i - 1 - start > best[1] - best[0]:
                best = (start, i - 1)
            start = None
    return best


def fitted_gain(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope times the x range: how much the trend rose over the stretch."""
    if len(xs) < 2 or xs[-1] == xs[0]:
        return 0.0
    mx, my = mean(xs), mean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * (xs[-1] - xs[0]) if var else 0.0


def value_at(run: Run, key: str, lo: int, hi: int) -> float | None:
    """Mean of a metric over steps lo..hi (inclusive), or None if it is not logged there."""
    vals = [v for s, v in zip(*series(run, key)) if lo <= s <= hi]
    return mean(vals) if vals else None


def long_enough(span: tuple[int, int] | None, n: int, share: float, floor: int) -> bool:
    """Is a stretch of a series of n points long enough to report? `share` of the run (at least
    `floor` points), or, when it lasts to the end (still going on), `floor` points.

    >>> long_enough((90, 99), 100, 0.25, 3), long_enough((40, 49), 100, 0.25, 3), long_enough(None, 5, 0.1, 3)
    (True, False, False)
    """
    if span is None:
        return False
    length = span[1] - span[0] + 1
    return length >= _min_stretch(n, share, floor) or (span[1] == n - 1 and length >= min(n, floor))


def _min_stretch(n: int, share: float, floor: int) -> int:
    return min(n, max(floor, math.ceil(share * n)))


def _missing(code: str, key: str, run: Run) -> Finding:
    s = run.steps
    return Finding(code, "info", (s[0], s[-1]), f"{key!r} is not logged in metrics.jsonl (an older run?); "
                   f"the {code} check was skipped", "")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


# ---------------------------------------------------------------- checks: one pure function per code

def _causes(run: Run, first: int, last: int) -> str:
    """Why groups may agree at steps first..last: cut-off completions or a failing checker (both score 0)."""
    out = ""
    trunc = value_at(run, "trunc_rate", first, last)
    if trunc is not None and trunc >= TRUNC_PROBLEM:
        out += f"; {_pct(trunc)} of completions were cut off at max_new_tokens there (see truncation)"
    invalid = value_at(run, "invalid_frac", first, last)
    if invalid is not None and invalid >= INVALID_PROBLEM:
        out += f"; {_pct(invalid)} of verdicts were invalid there (see invalid_verdicts)"
    return out


def check_no_signal(run: Run) -> list[Finding]:
    """Every group zero-variance (reward constant at 0 or 1 within each group) for a stretch."""
    steps, zv = series(run, "zero_var_frac")
    if steps:
        flags = [v >= 1 - EPS for v in zv]
    else:  # older runs: a step mean of exactly 0 or 1 means every sample scored the same
        steps, acc = series(run, "accuracy")
        if not steps:
            steps, acc = series(run, "reward")
        if not steps:
            return [_missing("no_signal", "zero_var_frac", run)]
        flags = [v <= EPS or v >= 1 - EPS for v in acc]
    span = longest_run(flags)
    if span is None or span[1] - span[0] + 1 < _min_stretch(len(steps), NO_SIGNAL_MIN_SHARE, NO_SIGNAL_MIN_STEPS):
        return []
    first, last = steps[span[0]], steps[span[1]]
    count = span[1] - span[0] + 1
    acc = value_at(run, "accuracy", first, last)
    reward = value_at(run, "reward", first, last)
    level = acc if acc is not None else reward
    dead = [k for k in ("loss", "grad_norm") if (v := value_at(run, k, first, last)) is not None and abs(v) <= 1e-6]
    evidence = f" ({' and '.join(dead)} 0 there)" if dead else ""
    evidence += _causes(run, first, last)
    base = (f"at {count} steps ({first}-{last}) every group's samples got the same reward, so every advantage "
            f"is 0 and the policy gets no gradient{evidence}: the run learns nothing there. ")
    if level is not None and level <= EPS:
        return [Finding("no_signal", "problem", (first, last), base + "Every completion was wrong (reward 0).",
                        "Check that the checker accepts a right answer (`ponder verify`), that prompts suit the "
                        "model (--prompt-format), that completions are not cut off (trunc_rate, --max-new-tokens); "
                        "then make the task easier (--task-options) or start from an SFT model (`ponder sft`).")]
    if level is not None and level >= 1 - EPS:
        before = value_at(run, "accuracy", run.steps[0], first - 1)
        solved_late = before is not None and before < 1 - 0.1
        return [Finding("no_signal", "warning" if solved_late else "problem", (first, last),
                        base + ("Every completion was right: the model solved the task"
                                + (f" by step {first}; later steps only cost time." if solved_late
                                   else " from the start; it is too easy for this model.")),
                        "Use harder task options (--task-options), stop earlier (--steps), or set "
                        "dynamic_sampling = true so solved prompts are replaced by informative ones.")]
    return [Finding("no_signal", "problem", (first, last),
                    base + f"Within each group all samples agreed (mean reward {reward if reward is not None else float('nan'):.2f}).",
                    "Samples are too alike: raise --temperature or --group-size, or set dynamic_sampling = true.")]


def check_zero_variance(run: Run) -> list[Finding]:
    """Most groups uninformative (all samples scored alike) over a long stretch."""
    steps, zv = series(run, "zero_var_frac")
    if not steps:
        return [_missing("zero_variance", "zero_var_frac", run)]
    if len(steps) < MIN_STEPS:
        return []
    smooth = rolling(zv, window(len(steps)))
    need = _min_stretch(len(steps), ZERO_VAR_MIN_SHARE, ZERO_VAR_MIN_STEPS)
    for threshold, severity in ((ZERO_VAR_PROBLEM, "problem"), (ZERO_VAR_WARN, "warning")):
        span = longest_run([v >= threshold for v in smooth])
        if span and span[1] - span[0] + 1 >= need:
            break
    else:
        return []
    first, last = steps[span[0]], steps[span[1]]
    share = mean(zv[span[0]: span[1] + 1])
    acc = value_at(run, "accuracy", first, last)
    used = value_at(run, "groups_used", first, last)
    per_step = run.config.get("prompts_per_step")
    refilled = bool(run.config.get("dynamic_sampling")) and used is not None and isinstance(per_step, int) \
        and used >= 0.9 * per_step
    if refilled and severity == "problem":
        severity = "warning"
    why = ("the task is (nearly) solved for these prompts" if acc is not None and acc >= 0.5
           else "the task is too hard for most prompts") if acc is not None else "rewards agree"
    why += _causes(run, first, last)
    return [Finding("zero_variance", severity, (first, last),
                    f"at steps {first}-{last}, {_pct(share)} of groups were uninformative on average (all samples "
                    f"scored alike, so their advantage is 0){f', accuracy {acc:.2f}' if acc is not None else ''}: "
                    f"{why}; each step learns from the few groups left"
                    + (" (dynamic sampling refilled the batch, at the cost of extra rollouts)." if refilled else "."),
                    "Move the difficulty towards the model: " + ("harder task options" if acc is None or acc >= 0.5
                                                                 else "easier task options or an SFT warm start")
                    + "; or set dynamic_sampling = true (drop and refill uninformative groups), a larger "
                      "--group-size, or stop once accuracy is where you want it.")]


def check_entropy_collapse(run: Run) -> list[Finding]:
    """Token entropy fell to a small fraction of its start: sampling stopped exploring."""
    steps, ent = series(run, "entropy")
    if not steps:
        return [_missing("entropy_collapse", "entropy", run)]
    if len(steps) < MIN_STEPS:
        return []
    w = window(len(steps))
    start = mean(ent[:w])
    if start <= ENTROPY_FLOOR:
        return []  # it started (near) deterministic: nothing to collapse from
    smooth = rolling(ent, w)
    span = longest_run([v <= ENTROPY_LOW_RATIO * start or v <= ENTROPY_FLOOR for v in smooth])
    if not long_enough(span, len(steps), LOW_STRETCH_MIN_SHARE, 3):
        return []
    first, last = steps[span[0]], steps[span[1]]
    low = median(ent[span[0]: span[1] + 1])  # the typical level there (smoothing blurs a sudden end)
    acc = value_at(run, "accuracy", first, last)
    severe = low <= ENTROPY_SEVERE_RATIO * start or low <= ENTROPY_FLOOR
    unsolved = acc is not None and acc < ENTROPY_SOLVED_ACC
    severity = "problem" if severe or unsolved else "warning" if acc is None else "info"
    t = run.config.get("temperature")
    return [Finding("entropy_collapse", severity, (first, last),
                    f"entropy fell from {start:.3g} to {low:.3g} nats/token ({_pct(low / start)} of its start) at "
                    f"steps {first}-{last}{f' while accuracy was {acc:.2f}' if acc is not None else ''}: samples in a "
                    "group become copies of each other, so groups stop carrying signal"
                    + ("." if severity == "problem" else "; harmless while accuracy stays high (the policy "
                       "sharpens on a task it mostly solves), but little exploration is left."),
                    f"Keep exploration: raise --temperature{f' (now {t})' if t is not None else ''}, raise "
                    "--clip-high (DAPO clip-higher), turn on adaptive entropy control (--entropy-target, e.g. "
                    f"{start / 2:.2g}, about half the starting entropy), lower --lr, or add --kl-coef; resume from "
                    f"a checkpoint before step {first}.")]


def check_truncation(run: Run) -> list[Finding]:
    """Completions running into max_new_tokens."""
    steps, tr = series(run, "trunc_rate")
    limit = run.config.get("max_new_tokens")
    lim = f"max_new_tokens = {limit}" if limit is not None else "max_new_tokens"
    fix = (f"Raise --max-new-tokens (now {limit})" if limit is not None else "Raise --max-new-tokens") + \
        ", or reward shorter thinking (--length-weight), or lower --temperature if the completions ramble."
    if not steps:
        out = [_missing("truncation", "trunc_rate", run)]
        ls, lmax = series(run, "resp_len_max")
        hit = [s for s, v in zip(ls, lmax) if isinstance(limit, int) and v >= limit]
        ms, lmean = series(run, "resp_len_mean")
        full = [s for s, v in zip(ms, lmean) if isinstance(limit, int) and v >= TRUNC_MEAN_LEN * limit]
        if len(full) >= _min_stretch(len(run.steps), LOW_STRETCH_MIN_SHARE, 3):
            out.append(Finding("truncation", "problem", (full[0], full[-1]), f"the mean completion length was at "
                               f"least {_pct(TRUNC_MEAN_LEN)} of {lim} at {len(full)} steps ({full[0]}-{full[-1]}): "
                               "most completions were cut off before their answer.", fix))
        elif hit:
            out.append(Finding("truncation", "warning", (hit[0], hit[-1]), f"the longest completion reached {lim} "
                               f"at {len(hit)} steps ({hit[0]}-{hit[-1]}); how many were cut is not logged", fix))
        return out
    smooth = rolling(tr, window(len(steps)))
    span = longest_run([v >= TRUNC_PROBLEM for v in smooth])
    if long_enough(span, len(steps), LOW_STRETCH_MIN_SHARE, 3):
        first, last = steps[span[0]], steps[span[1]]
        return [Finding("truncation", "problem", (first, last),
                        f"{_pct(mean(tr[span[0]: span[1] + 1]))} of completions (peak {_pct(max(tr[span[0]: span[1] + 1]))}) "
                        f"ran into {lim} at steps {first}-{last}: a cut-off completion has no final answer and "
                        "scores 0 however good its reasoning, so the run learns to stop thinking or rambles on.", fix)]
    w = window(len(steps))
    head, tail = mean(tr[:w]), mean(tr[-w:])
    if len(steps) >= MIN_STEPS and tail >= TRUNC_WARN and tail >= 2 * head:
        first = next(s for s, v in zip(steps, smooth) if v >= TRUNC_WARN)
        return [Finding("truncation", "warning", (first, steps[-1]),
                        f"truncation is creeping up: {_pct(head)} of completions hit {lim} in the first steps, "
                        f"{_pct(tail)} in the last ones.", fix)]
    return []


def check_invalid_verdicts(run: Run) -> list[Finding]:
    """The checker failing: verdicts `invalid` (it raised, timed out or crashed)."""
    steps, inv = series(run, "invalid_frac")
    if not steps:
        return [_missing("invalid_verdicts", "invalid_frac", run)]
    bad = [i for i, v in enumerate(inv) if v > EPS]
    if not bad:
        return []
    smooth = rolling(inv, window(len(steps)))
    severe = max(smooth) >= INVALID_PROBLEM or max(inv) >= INVALID_SPIKE
    first, last = steps[bad[0]], steps[bad[-1]]
    return [Finding("invalid_verdicts", "problem" if severe else "warning", (first, last),
                    f"the checker failed (verdict 'invalid') on {_pct(mean(inv[bad[0]: bad[-1] + 1]))} of completions "
                    f"at steps {first}-{last} (worst step {_pct(max(inv))}, {len(bad)} steps affected): those samples "
                    "are masked out of the loss, and a step where all fail logs reward 0.",
                    "Run the checker on a few completions to see its error (`ponder verify`, `ponder probe`); check "
                    "its timeout and, for code tasks, that the sandbox works (bubblewrap installed).")]


def grad_spikes(grads: list[float]) -> list[int]:
    """Indices where the gradient norm is GRAD_SPIKE_RATIO x the median of the GRAD_HISTORY steps before
    it (zero norms, steps with no signal, are left out of the median); an infinite norm always counts.

    >>> grad_spikes([1.0] * 6 + [50.0, 1.0])
    [6]
    """
    out = []
    for i, g in enumerate(grads):
        if math.isinf(g):
            out.append(i)
            continue
        hist = [h for h in grads[max(0, i - GRAD_HISTORY): i] if 0 < h < math.inf]
        if len(hist) >= MIN_STEPS and g > GRAD_SPIKE_RATIO * median(hist):
            out.append(i)
    return out


def _kl_part(run: Run) -> tuple[str, tuple[int, int] | None, str]:
    steps, kl = series(run, "kl", keep_inf=True)
    if not steps:
        return "", None, ""
    finite = [min(v, 1e30) for v in kl]
    smooth = rolling(finite, window(len(steps)))
    for threshold, severity in ((KL_PROBLEM, "problem"), (KL_WARN, "warning")):
        hot = [i for i, v in enumerate(smooth) if v >= threshold or math.isinf(kl[i])]
        if hot:
            peak = max(kl)
            return severity, (steps[hot[0]], steps[hot[-1]]), (
                f"KL to the starting model reached {peak:.3g} nats/token (smoothed >= {threshold} at steps "
                f"{steps[hot[0]]}-{steps[hot[-1]]})")
    return "", None, ""


def _grad_part(run: Run) -> tuple[str, tuple[int, int] | None, str]:
    steps, gn = series(run, "grad_norm", keep_inf=True)
    if len(steps) < MIN_STEPS:
        return "", None, ""
    spikes = grad_spikes(gn)
    w = window(len(steps))
    pos = [g for g in gn if g > 0]
    head = median([g for g in gn[:w] if g > 0] or [0.0])
    tail = median([g for g in gn[-w:] if g > 0] or [0.0])
    growth = head > 0 and (tail == math.inf or tail >= GRAD_GROWTH * head)
    if growth:
        first = next(steps[i] for i, g in enumerate(gn) if g >= GRAD_GROWTH * head)
        return "problem", (first, steps[-1]), (f"the gradient norm grew from {head:.3g} (first steps) to "
                                               f"{tail:.3g} (last steps)")
    if spikes and pos:
        sev = "problem" if len(spikes) >= GRAD_SPIKES_PROBLEM or any(math.isinf(gn[i]) for i in spikes) else "warning"
        at = ", ".join(str(steps[i]) for i in spikes[:8]) + (" ..." if len(spikes) > 8 else "")
        return sev, (steps[spikes[0]], steps[spikes[-1]]), (
            f"the gradient norm spiked to {GRAD_SPIKE_RATIO:g}x its recent median or more at {len(spikes)} "
            f"step(s) ({at}; largest {max(gn[i] for i in spikes):.3g})")
    return "", None, ""


def check_kl_blowup(run: Run) -> list[Finding]:
    """KL to the starting model, or the gradient norm, exploding: the policy is running away."""
    parts = [p for p in (_kl_part(run), _grad_part(run)) if p[0]]
    if not parts:
        missing = [k for k in ("kl", "grad_norm") if not series(run, k, keep_inf=True)[0]]
        return [_missing("kl_blowup", " and ".join(missing), run)] if len(missing) == 2 else []
    severity = "problem" if any(p[0] == "problem" for p in parts) else "warning"
    first = min(p[1][0] for p in parts)
    last = max(p[1][1] for p in parts)
    c = run.config

    def now(k: str) -> str:
        return f" (now {c[k]})" if k in c else ""
    return [Finding("kl_blowup", severity, (first, last),
                    "; ".join(p[2] for p in parts) + ": updates are too large and the policy is running away "
                    "from the model it started as (its outputs degrade, rewards turn noisy).",
                    f"Lower --lr{now('lr')}, add or raise --kl-coef{now('kl_coef')} (e.g. 0.01-0.05), keep "
                    f"--grad-clip{now('grad_clip')} at 1 or lower, narrow --clip-high{now('clip_high')}; resume "
                    f"from a checkpoint before step {first}.")]


def check_length_collapse(run: Run) -> list[Finding]:
    """Thinking abandoned (fell to half its peak) while accuracy fell."""
    steps, think = series(run, "think_len_mean")
    if not steps:
        return [_missing("length_collapse", "think_len_mean", run)]
    if len(steps) < MIN_STEPS:
        return []
    w = window(len(steps))
    smooth = rolling(think, w)
    p = max(range(len(smooth)), key=smooth.__getitem__)
    peak, tail = smooth[p], mean(think[-w:])
    if peak < LENGTH_MIN_PEAK or tail > LENGTH_DROP_RATIO * peak:
        return []
    peak_step, last = steps[p], steps[-1]
    h = w // 2
    acc_peak = value_at(run, "accuracy", steps[max(0, p - h)], steps[min(len(steps) - 1, p + h)])
    acc_tail = value_at(run, "accuracy", steps[-w], last)
    what = (f"thinking shrank from {peak:.0f} tokens (around step {peak_step}) to {tail:.0f} (last steps)")
    if acc_peak is None or acc_tail is None:
        return [Finding("length_collapse", "warning", (peak_step, last), what + "; accuracy is not logged, so "
                        "whether it hurt cannot be told.", "Compare held-out accuracy before and after.")]
    if acc_tail > acc_peak - LENGTH_ACC_DROP:
        lw = run.config.get("length_weight")
        return [Finding("length_collapse", "info", (peak_step, last),
                        what + f" while accuracy held ({acc_peak:.2f} -> {acc_tail:.2f}): shorter thinking that "
                        "still solves the task" + (" (the length reward asks for it)." if lw else "."), "")]
    trunc = value_at(run, "trunc_rate", peak_step, last)
    return [Finding("length_collapse", "problem", (peak_step, last),
                    what + f" while accuracy fell from {acc_peak:.2f} to {acc_tail:.2f}: the model is abandoning its "
                    "reasoning" + (f" (truncation at {_pct(trunc)} punishes long thoughts)" if trunc and trunc > TRUNC_WARN
                                   else "") + ".",
                    "Lower or drop --length-weight, raise --max-new-tokens if long thoughts were cut off, add "
                    "--format-weight to reward the <think> section, lower --lr; resume from a checkpoint near "
                    f"step {peak_step}.")]


def _reward_near(run: Run, step: int, w: int) -> float | None:
    """Mean train reward over the w logged steps ending at `step` (the first w if none is that early)."""
    steps, r = series(run, "reward")
    if not steps:
        return None
    end = max([i for i, s in enumerate(steps) if s <= step] or [min(w, len(steps)) - 1])
    return mean(r[max(0, end - w + 1): end + 1])


def _held_out_points(run: Run) -> list[HeldOut]:
    """One point per step (the mean of the held-out accuracies logged for it), in step order."""
    by_step: dict[int, list[HeldOut]] = {}
    for h in run.held_out:
        by_step.setdefault(h.step, []).append(h)
    return [HeldOut(s, mean(h.accuracy for h in hs), hs[0].n, ", ".join(h.source for h in hs))
            for s, hs in sorted(by_step.items())]


def check_reward_hacking(run: Run) -> list[Finding]:
    """Train reward rising while held-out accuracy does not (or, without held-out evals, while
    verified train accuracy does not)."""
    steps, _ = series(run, "reward")
    if len(steps) < MIN_STEPS:
        return []
    w = window(len(steps))
    fix = ("Look for an exploit in the checker (`ponder probe`), read high-reward completions in the report, "
           "drop format/length weights that pay without correctness, and check that train and held-out use the "
           "same task settings.")
    points = _held_out_points(run)
    if len(points) >= 2:
        b, a = points[0], points[-1]
        rb, ra = _reward_near(run, b.step, w), _reward_near(run, a.step, w)
        train_gain, held_gain = ra - rb, a.accuracy - b.accuracy
        if train_gain >= HACK_MIN_TRAIN_GAIN and held_gain <= HACK_HELDOUT_SHARE * train_gain:
            peak = max(points, key=lambda h: h.accuracy)
            start = peak.step if peak.step < a.step else b.step
            n = f", {a.n} problems" if a.n else ""
            return [Finding("reward_hacking", "problem", (start, a.step),
                            f"train reward rose by {train_gain:+.2f} ({rb:.2f} -> {ra:.2f}) between steps {b.step} "
                            f"and {a.step}, while held-out accuracy changed by {held_gain:+.2f} ({b.accuracy:.2f} -> "
                            f"{a.accuracy:.2f}{n}; from {b.source} and {a.source}): the policy learns to please the "
                            "reward, not to solve the task.", fix)]
        return []
    out = [Finding("reward_hacking", "info", (steps[0], steps[-1]),
                   "no held-out evaluations found, so reward hacking was judged from train accuracy only",
                   "Evaluate the start and the end on the held-out split: `ponder eval --model BASE --label before "
                   "--out RUN_DIR/eval/before.json`, then the trained model with --label after (quickstart and "
                   "pipeline runs do this already).")]
    rs, accs = series(run, "reward")[1], series(run, "accuracy")[1]
    if len(accs) >= MIN_STEPS:
        r_gain, a_gain = mean(rs[-w:]) - mean(rs[:w]), mean(accs[-w:]) - mean(accs[:w])
        if r_gain >= HACK_MIN_TRAIN_GAIN and a_gain <= HACK_HELDOUT_SHARE * r_gain:
            out.append(Finding("reward_hacking", "warning", (steps[0], steps[-1]),
                               f"train reward rose by {r_gain:+.2f} while verified train accuracy changed by "
                               f"{a_gain:+.2f}: the reward pays for something other than correctness (format or "
                               "length terms, partial credit).", fix))
    return out


def is_flat(xs: list[float], ys: list[float]) -> bool:
    """No upward trend (fitted gain under PLATEAU_MIN_GAIN) and the three thirds' means agree within
    noise (per-step noise from successive differences, which a trend does not inflate).

    >>> is_flat(list(range(30)), [0.5, 0.52] * 15), is_flat(list(range(30)), [0.5] * 10 + [0.9] * 10 + [0.5] * 10)
    (True, False)
    """
    if len(ys) < 6 or fitted_gain(xs, ys) >= PLATEAU_MIN_GAIN:
        return False
    k = len(ys) // 3
    thirds = [mean(ys[:k]), mean(ys[k:-k]), mean(ys[-k:])]
    diffs = [b - a for a, b in zip(ys, ys[1:])]
    noise = math.sqrt(mean(d * d for d in diffs) / 2)
    return max(thirds) - min(thirds) <= max(PLATEAU_THIRDS_TOL, PLATEAU_THIRDS_SE * noise / math.sqrt(k))


def check_plateau(run: Run) -> list[Finding]:
    """Reward stopped improving for 20+ steps and half the run, below the top."""
    steps, r = series(run, "reward")
    n = len(steps)
    if n < PLATEAU_MIN_STEPS:
        return []
    stride = max(1, n // PLATEAU_STARTS)
    for s in range(0, n - PLATEAU_MIN_STEPS + 1, stride):
        if is_flat(steps[s:], r[s:]):
            break
    else:
        return []
    if n - s < max(PLATEAU_MIN_STEPS, PLATEAU_SHARE * n):
        return []
    first, last = steps[s], steps[-1]
    acc = value_at(run, "accuracy", first, last)
    level = min(acc, mean(r[s:])) if acc is not None else mean(r[s:])  # a flat reward is flat whatever accuracy says
    gain = fitted_gain(steps[s:], r[s:])
    how = ("never improved: it" if s == 0 else f"improved until step {first}, then") + \
        f" stayed flat for {last - first + 1} steps (trend {gain:+.3f}) at {'accuracy' if acc is not None else 'reward'} {level:.2f}"
    if level >= PLATEAU_SOLVED:
        return [Finding("plateau", "info", (first, last), f"reward {how}: converged near the top; later steps "
                        "add little.", "Stop earlier (--steps) or move to harder task options.")]
    return [Finding("plateau", "problem", (first, last), f"reward {how}: the run has stopped learning well below "
                    "the top.", "Change something rather than train longer: --lr (up if updates are tiny, down if "
                    "noisy), the task's difficulty (--task-options), --group-size or --temperature for more signal "
                    "per prompt, or an SFT warm start (`ponder sft`).")]


CHECKS = (check_no_signal, check_zero_variance, check_entropy_collapse, check_truncation, check_invalid_verdicts,
          check_kl_blowup, check_length_collapse, check_reward_hacking, check_plateau)


# ---------------------------------------------------------------- putting it together

def _inside(inner: tuple[int, int] | None, outer: tuple[int, int]) -> bool:
    """Does `outer` cover at least half of `inner`?"""
    if inner is None:
        return False
    overlap = min(inner[1], outer[1]) - max(inner[0], outer[0]) + 1
    return overlap >= 0.5 * (inner[1] - inner[0] + 1)


def deduplicate(findings: list[Finding]) -> list[Finding]:
    """A no-signal stretch also looks like zero variance and a plateau; say it once."""
    dead = [f.steps for f in findings if f.code == "no_signal" and f.severity == "problem" and f.steps]
    return [f for f in findings
            if not (f.code in ("zero_variance", "plateau") and any(_inside(f.steps, d) for d in dead))]


def _order(f: Finding) -> tuple:
    # Within a severity the earliest first: a cause (a KL blow-up at step 2) precedes its effects.
    return (f.stage, SEVERITIES.index(f.severity), (f.steps or (0, 0))[0],
            CODES.index(f.code) if f.code in CODES else len(CODES))


def diagnose(run: Run) -> list[Finding]:
    """Every check over one run, deduplicated and ordered: problems first."""
    findings = [f for check in CHECKS for f in check(run)]
    if len(run.steps) < MIN_STEPS:
        findings.append(Finding("short_run", "info", (run.steps[0], run.steps[-1]),
                                f"only {len(run.steps)} steps logged: trend checks need at least {MIN_STEPS}"))
    whole = (run.steps[0], run.steps[-1])  # a finding about the files covers the whole run
    return sorted((replace(f, steps=f.steps or whole) for f in deduplicate(findings) + list(run.notes)), key=_order)


def _is_rl_stage(stage_dir: Path) -> bool:
    """A pipeline stage doctor can read: it logged steps with a reward (SFT stages log only a loss)."""
    p = stage_dir / "metrics.jsonl"
    return p.is_file() and any('"reward"' in line for line in p.read_text(errors="replace").splitlines())


def diagnose_dir(run_dir: str | Path) -> list[Finding]:
    """Findings for a run directory; a pipeline run (pipeline.json, no metrics.jsonl) stage by stage."""
    run_dir = Path(run_dir)
    meta = run_dir / "pipeline.json"
    if meta.is_file() and not (run_dir / "metrics.jsonl").is_file():
        info = _read_json(meta, "pipeline.json")
        names = info.get("stages") if isinstance(info, dict) else None
        if not isinstance(names, list):
            raise DoctorError("pipeline.json line 1: no \"stages\" list")
        trained = [str(n) for n in names if _is_rl_stage(run_dir / str(n))]
        if not trained:
            raise DoctorError(f"pipeline run {str(run_dir)!r}: no RL stage has a metrics.jsonl yet (stages: "
                              f"{', '.join(map(str, names))})")
        out = []
        for name in trained:
            try:
                out += [replace(f, stage=name) for f in diagnose(load_run(run_dir / name))]
            except DoctorError as e:
                raise DoctorError(f"{name}/{e}") from None
        return sorted(out, key=_order)
    return diagnose(load_run(run_dir))


def to_json(findings: list[Finding]) -> dict:
    return {"findings": [f.to_json() for f in findings]}


def _steps_text(f: Finding) -> str:
    if not f.steps:
        return ""
    a, b = f.steps
    return f" (step {a})" if a == b else f" (steps {a}-{b})"


def format_text(findings: list[Finding], title: str) -> str:
    """The plain-words report `ponder doctor` prints."""
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    lines = [f"ponder doctor: {title}"]
    for f in findings:
        where = f"[{f.stage}] " if f.stage else ""
        lines.append(f"\n{f.severity.upper():8s}{where}{f.code}{_steps_text(f)}")
        lines.append(f"  {f.explanation}")
        if f.suggestion:
            lines.append(f"  what to change: {f.suggestion}")
    verdict = "no problems found" if not counts["problem"] else f"{counts['problem']} problem(s)"
    lines.append(f"\n{verdict}; {counts['warning']} warning(s), {counts['info']} note(s)")
    return "\n".join(lines)


SUMMARY_CHARS = 150


def summary_lines(run_dir: str | Path) -> list[str]:
    """A few lines for the end of `ponder train`: counts, then each problem and warning in brief.
    Never raises: a run that cannot be read gets one line saying why."""
    try:
        findings = diagnose_dir(run_dir)
    except DoctorError as e:
        return [f"doctor: cannot check this run: {e}"]
    shown = [f for f in findings if f.severity != "info"]
    n_prob = sum(f.severity == "problem" for f in shown)
    head = (f"doctor: {n_prob} problem(s), {len(shown) - n_prob} warning(s)" if shown else "doctor: no problems found")
    lines = [head + (f"; details: ponder doctor {run_dir}" if shown else "")]
    for f in shown:
        text = f.explanation if len(f.explanation) <= SUMMARY_CHARS else f.explanation[: SUMMARY_CHARS - 3] + "..."
        lines.append(f"  {f.severity} {f.code}{_steps_text(f)}: {text}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ponder doctor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Exit status: 0 when the run was read (even with problems, unless "
                                        "--strict), 1 with --strict and a problem, 2 when it cannot be read.")
    ap.add_argument("run_dir", help="run directory (metrics.jsonl, config.json, eval files)")
    ap.add_argument("--json", action="store_true", help='print {"findings": [...]} instead of text')
    ap.add_argument("--strict", action="store_true", help="exit 1 when any finding is a problem (for CI)")
    args = ap.parse_args(argv)
    findings = diagnose_dir(args.run_dir)
    if args.json:
        print(json.dumps(to_json(findings), indent=1))
    else:
        print(format_text(findings, str(args.run_dir)))
    return 1 if args.strict and any(f.severity == "problem" for f in findings) else 0
