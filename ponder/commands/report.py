"""`ponder report RUN_DIR`: one static HTML page with PNG plots for a run.

Reads what a run leaves behind and draws what is there:
  RUN_DIR/metrics.jsonl   one JSON object per RL step (any key may be missing)
  RUN_DIR/eval/*.json     one file per evaluation: {"label", "summary", "samples"}
and writes RUN_DIR/report/index.html plus its PNGs beside it. Anything that
is missing or unreadable is skipped and listed at the top of the page, so a
half-finished run still gets a report.

The page is self-contained: no JavaScript, no external resources, images by
relative path. Completions are model output and every piece of text from
the run (labels, keys, completions) is HTML-escaped.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ponder.core.config import ConfigError
from ponder.rl.doctor import DoctorError, diagnose_dir

# Per-step metrics in the order the last-step table shows them.
STEP_KEYS = (
    "step", "reward", "accuracy", "zero_var_frac", "resp_len_mean", "resp_len_max",
    "think_len_mean", "think_len_max", "trunc_rate", "entropy", "kl", "clip_frac",
    "tokens_per_s", "step_time", "self_check_frac", "loss", "lr",
)
# Small multiples of training-health signals: (metric key, panel title).
HEALTH_PANELS = (
    ("self_check_frac", "self-check share"),
    ("zero_var_frac", "zero-variance groups"),
    ("trunc_rate", "truncation rate"),
    ("entropy", "entropy"),
    ("kl", "KL to reference"),
    ("clip_frac", "clip fraction"),
)
# Eval labels a before/after comparison puts first; others follow by name.
LABEL_ORDER = ("before", "after")
N_EXAMPLES = 3
MAX_COMPLETION_CHARS = 3000


# ---------------------------------------------------------------- reading

def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of metrics.jsonl, and a note per line that could not be parsed.

    A run that crashed or is still writing can leave a torn last line, so
    bad lines are skipped and reported rather than failing the report.
    """
    rows, notes = [], []
    # Undecodable bytes become U+FFFD, so such a line fails to parse and is noted below.
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            notes.append(f"{path.name} line {i} is not valid JSON ({e.msg}); skipped")
            continue
        if not isinstance(row, dict):
            notes.append(f"{path.name} line {i} is not a JSON object; skipped")
            continue
        rows.append(row)
    return rows, notes


def _label_key(ev: dict) -> tuple:
    label = ev["label"]
    return (LABEL_ORDER.index(label) if label in LABEL_ORDER else len(LABEL_ORDER), label)


def read_evals(eval_dir: Path) -> tuple[list[dict], list[str]]:
    """Evaluation files as dicts with `label`, `summary`, `samples`, ordered before, after, rest."""
    evals, notes = [], []
    for path in sorted(eval_dir.glob("*.json")):
        try:
            ev = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            notes.append(f"eval/{path.name} is not valid JSON ({e}); skipped")
            continue
        if not isinstance(ev, dict):
            notes.append(f"eval/{path.name} is not a JSON object; skipped")
            continue
        summary = ev.get("summary") if isinstance(ev.get("summary"), dict) else {}
        samples = [s for s in ev.get("samples") or [] if isinstance(s, dict)]
        evals.append({"label": str(ev.get("label") or path.stem), "summary": summary, "samples": samples})
    return sorted(evals, key=_label_key), notes


# ---------------------------------------------------------------- pure transforms

def _number(v) -> float | None:
    # bool is an int subclass but a flag, not a measurement.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) for one metric, skipping rows where it is missing or not finite.

    A row without `step` is placed at its position in the file.

    >>> series([{"step": 1, "kl": 0.5}, {"step": 2}, {"step": 3, "kl": float("nan")}, {"kl": 1}], "kl")
    ([1.0, 3.0], [0.5, 1.0])
    """
    xs, ys = [], []
    for i, row in enumerate(rows):
        y = _number(row.get(key))
        if y is None:
            continue
        x = _number(row.get("step"))
        xs.append(float(i) if x is None else x)
        ys.append(y)
    return xs, ys


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average; the first points average over what exists so far.

    >>> smooth([0.0, 1.0, 2.0, 3.0], 2)
    [0.0, 0.5, 1.5, 2.5]
    """
    if window < 1:
        raise ValueError(f"smooth: window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smooth_window(n: int) -> int:
    """About a tenth of the run, at least 1: visible trend without hiding the shape."""
    return max(1, round(n / 10))


def bin_edges(values: Sequence[float], n_bins: int = 8) -> list[float]:
    """Equal-width bin edges from 0 to the largest value (one bin if all are 0).

    >>> bin_edges([0, 10, 40], n_bins=4)
    [0.0, 10.0, 20.0, 30.0, 40.0]
    """
    top = max(values, default=0.0)
    if top <= 0:
        return [0.0, 1.0]
    return [top * i / n_bins for i in range(n_bins + 1)]


def accuracy_by_bin(xs: Sequence[float], correct: Sequence[bool],
                    edges: Sequence[float]) -> list[tuple[float, float, int]]:
    """(bin centre, accuracy, count) for each non-empty bin; the last bin includes its top edge.

    >>> accuracy_by_bin([0, 5, 15, 20], [False, True, True, True], [0, 10, 20])
    [(5.0, 0.5, 2), (15.0, 1.0, 2)]
    """
    n_bins = len(edges) - 1
    hits, counts = [0] * n_bins, [0] * n_bins
    for x, ok in zip(xs, correct):
        b = next((i for i in range(n_bins) if x < edges[i + 1]), n_bins - 1)
        counts[b] += 1
        hits[b] += bool(ok)
    return [((edges[i] + edges[i + 1]) / 2, hits[i] / counts[i], counts[i])
            for i in range(n_bins) if counts[i]]


def accuracy_by_group(samples: Sequence[dict], key: str) -> dict:
    """Accuracy per value of `key` among samples that have both `key` and `correct`.

    >>> accuracy_by_group([{"difficulty": 2, "correct": True}, {"difficulty": 2, "correct": False},
    ...                    {"difficulty": 1, "correct": True}, {"correct": True}], "difficulty")
    {1: 1.0, 2: 0.5}
    """
    hits: dict = {}
    counts: dict = {}
    for s in samples:
        if s.get(key) is None or not isinstance(s.get("correct"), bool):
            continue
        g = s[key]
        counts[g] = counts.get(g, 0) + 1
        hits[g] = hits.get(g, 0) + s["correct"]
    return {g: hits[g] / counts[g] for g in sorted(counts)}


def pick_examples(samples: Sequence[dict], n: int = N_EXAMPLES) -> list[dict]:
    """Up to n samples with a completion, showing a correct and a wrong one when both exist.

    Deterministic (file order), so the same run gives the same page.

    >>> [s["id"] for s in pick_examples([{"id": "a", "correct": True, "completion": "x"},
    ...     {"id": "b", "correct": True, "completion": "x"}, {"id": "c", "correct": False, "completion": "x"}])]
    ['a', 'c', 'b']
    """
    usable = [s for s in samples if isinstance(s.get("completion"), str)]
    first = [next((s for s in usable if s.get("correct") is ok), None) for ok in (True, False)]
    chosen = [s for s in first if s is not None]
    chosen += [s for s in usable if all(s is not c for c in chosen)]
    return chosen[:n]


# ---------------------------------------------------------------- plots
# Each plot function draws onto a fresh Figure (no pyplot, so no global
# backend state) and returns the file name it wrote, or None if there was
# nothing to draw.

def _figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.2):
    from matplotlib.figure import Figure  # lazy: only `ponder report` needs matplotlib
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, axes


def _line_with_trend(ax, xs, ys, name: str) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.plot(xs, ys, color="C0", alpha=0.35, lw=1, label=f"{name} (raw)")
    ax.plot(xs, smooth(ys, smooth_window(len(ys))), color="C0", lw=2, label=f"{name} (smoothed)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)


def plot_reward_accuracy(rows: Sequence[dict], out_dir: Path) -> str | None:
    present = [(k, series(rows, k)) for k in ("reward", "accuracy")]
    present = [(k, s) for k, s in present if s[0]]
    if not present:
        return None
    fig, axes = _figure(ncols=len(present))
    for ax, (key, (xs, ys)) in zip(axes, present):
        _line_with_trend(ax, xs, ys, key)
        ax.legend(fontsize=8)
    name = "reward_accuracy.png"
    fig.savefig(out_dir / name)
    return name


def plot_thinking_length(rows: Sequence[dict], out_dir: Path) -> str | None:
    lines = [(k, series(rows, k)) for k in ("think_len_mean", "think_len_max", "resp_len_mean")]
    lines = [(k, s) for k, s in lines if s[0]]
    if not lines:
        return None
    fig, (ax,) = _figure(width=6.0)
    for key, (xs, ys) in lines:
        ax.plot(xs, ys, lw=2 if key == "think_len_mean" else 1,
                ls="--" if key.startswith("resp") else "-", label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("tokens")
    ax.set_title("thinking length over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = "thinking_length.png"
    fig.savefig(out_dir / name)
    return name


def plot_health(rows: Sequence[dict], out_dir: Path) -> str | None:
    panels = [(title, series(rows, key)) for key, title in HEALTH_PANELS]
    panels = [(t, s) for t, s in panels if s[0]]
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(ncols=ncols, nrows=nrows, width=3.6, height=2.6)
    for ax, (title, (xs, ys)) in zip(axes, panels):
        _line_with_trend(ax, xs, ys, title)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    name = "training_health.png"
    fig.savefig(out_dir / name)
    return name


def _thinking_points(samples: Sequence[dict]) -> tuple[list[float], list[bool]]:
    xs, ok = [], []
    for s in samples:
        x = _number(s.get("thinking_tokens"))
        if x is not None and isinstance(s.get("correct"), bool):
            xs.append(x)
            ok.append(s["correct"])
    return xs, ok


def plot_accuracy_vs_thinking(evals: Sequence[dict], out_dir: Path) -> str | None:
    points = [(ev["label"], _thinking_points(ev["samples"])) for ev in evals]
    points = [(label, p) for label, p in points if p[0]]
    if not points:
        return None
    # Shared edges so the labels' curves are comparable bin for bin.
    edges = bin_edges([x for _, (xs, _) in points for x in xs])
    fig, (ax,) = _figure(width=6.0)
    for label, (xs, ok) in points:
        bins = accuracy_by_bin(xs, ok, edges)
        ax.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", label=f"{label} (n={len(xs)})")
    ax.set_xlabel("thinking tokens (binned)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("accuracy vs thinking tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = "accuracy_vs_thinking.png"
    fig.savefig(out_dir / name)
    return name


def plot_accuracy_by_difficulty(evals: Sequence[dict], out_dir: Path) -> str | None:
    per_label = [(ev["label"], accuracy_by_group(ev["samples"], "difficulty")) for ev in evals]
    per_label = [(label, acc) for label, acc in per_label if acc]
    if not per_label:
        return None
    # Numeric difficulties in numeric order (2 before 10), anything else after, by name.
    levels = sorted({d for _, acc in per_label for d in acc},
                    key=lambda d: (_number(d) is None, _number(d) or 0.0, str(d)))
    width = 0.8 / len(per_label)
    fig, (ax,) = _figure(width=6.0)
    for j, (label, acc) in enumerate(per_label):
        xs = [i + (j - (len(per_label) - 1) / 2) * width for i, d in enumerate(levels) if d in acc]
        ax.bar(xs, [acc[d] for d in levels if d in acc], width=width, label=label)
    ax.set_xticks(range(len(levels)), [str(d) for d in levels])
    ax.set_xlabel("difficulty")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("accuracy per difficulty")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    name = "accuracy_by_difficulty.png"
    fig.savefig(out_dir / name)
    return name


# ---------------------------------------------------------------- HTML

def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    n = _number(v)
    if n is None:
        return "—" if v is None else _e(v)
    if n == int(n) and abs(n) < 1e15:
        return str(int(n))
    return f"{n:.4g}"


def _fmt_frac(v) -> str:
    n = _number(v)
    return _fmt(v) if n is None else f"{100 * n:.1f}%"


def _summary_rows(evals: Sequence[dict]) -> list[tuple[str, list, bool]]:
    """(row name, value per eval, is-a-fraction) for every summary field any eval has."""
    sums = [ev["summary"] for ev in evals]

    def ks(field):  # k values of a {k: value} field across evals, numerically sorted
        keys = {str(k) for s in sums if isinstance(s.get(field), dict) for k in s[field]}
        return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))

    rows = [("accuracy", [s.get("accuracy") for s in sums], True)]
    for field, name in (("pass_at_k", "pass@"), ("maj_at_k", "maj@")):
        for k in ks(field):
            rows.append((f"{name}{k}", [(s.get(field) or {}).get(k) if isinstance(s.get(field), dict)
                                        else None for s in sums], True))
    rows += [
        ("mean thinking tokens", [s.get("mean_thinking_tokens") for s in sums], False),
        ("self-check share", [s.get("self_check_frac") for s in sums], True),
        ("problems", [s.get("n_problems") for s in sums], False),
    ]
    return [r for r in rows if any(v is not None for v in r[1])]


def _ci_text(ci) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(c) is not None for c in ci):
        return f" <span class=ci>[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>"
    return ""


def eval_table(evals: Sequence[dict]) -> str:
    """Eval summaries side by side; a change column when both `before` and `after` exist."""
    labels = [ev["label"] for ev in evals]
    delta = "before" in labels and "after" in labels
    head = "".join(f"<th>{_e(label)}</th>" for label in labels) + ("<th>after − before</th>" if delta else "")
    body = []
    for name, values, is_frac in _summary_rows(evals):
        fmt = _fmt_frac if is_frac else _fmt
        cells = []
        for ev, v in zip(evals, values):
            ci = _ci_text(ev["summary"].get("accuracy_ci")) if name == "accuracy" else ""
            cells.append(f"<td>{fmt(v)}{ci}</td>")
        if delta:
            b, a = (_number(values[labels.index(x)]) for x in ("before", "after"))
            d = "—" if a is None or b is None else (f"{100 * (a - b):+.1f} pts" if is_frac else f"{a - b:+.4g}")
            cells.append(f"<td>{d}</td>")
        body.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


def last_step_table(row: dict) -> str:
    keys = [k for k in STEP_KEYS if k in row] + sorted(k for k in row if k not in STEP_KEYS)
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_fmt(row[k])}</td></tr>" for k in keys)
    return f"<table>{body}</table>"


def examples_html(ev: dict) -> str:
    parts = []
    for s in pick_examples(ev["samples"]):
        text = s["completion"]
        cut = len(text) > MAX_COMPLETION_CHARS
        if cut:
            text = text[:MAX_COMPLETION_CHARS]
        verdict = {True: "correct", False: "wrong"}.get(s.get("correct"), "unscored")
        meta = ", ".join(f"{k} {_fmt(s[k])}" for k in ("difficulty", "thinking_tokens", "answer_tokens") if k in s)
        parts.append(
            f"<div class='ex {verdict}'><div class=meta>{_e(s.get('id', '?'))} · "
            f"<b>{verdict}</b>{' · ' + meta if meta else ''}</div>"
            f"<pre>{_e(text)}{'<i>… (truncated)</i>' if cut else ''}</pre></div>"
        )
    return "".join(parts) or "<p>No completions in this file.</p>"


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f4f4f4;text-align:left}
.ci{color:#777;font-size:.85em}
img{max-width:100%;margin:.5em 0}
.notes{background:#fff6e0;border:1px solid #e8c878;padding:.5em 1em}
.ex{border-left:4px solid #aaa;margin:.7em 0;padding:.2em .8em;background:#fafafa}
.ex.correct{border-color:#3a3}.ex.wrong{border-color:#c33}
.meta{font-size:.85em;color:#555}
pre{white-space:pre-wrap;word-break:break-word;font-size:.85em}
"""


def doctor_html(findings: Sequence) -> str:
    """The `ponder doctor` findings (ponder.rl.doctor.Finding): problems and warnings, then notes."""
    items = []
    for f in findings:
        steps = f" (steps {f.steps[0]}-{f.steps[1]})" if f.steps else ""
        fix = f"<br><i>What to change:</i> {_e(f.suggestion)}" if f.suggestion else ""
        items.append(f"<li><b>{_e(f.severity)}</b> {_e(f.stage + ': ' if f.stage else '')}<code>{_e(f.code)}</code>"
                     f"{_e(steps)}: {_e(f.explanation)}{fix}</li>")
    verdict = "no problems found" if not any(f.severity == "problem" for f in findings) else "problems found"
    return f"<h2>Doctor</h2><p>{verdict} (<code>ponder doctor</code>)</p>" + (f"<ul>{''.join(items)}</ul>" if items else "")


def render_html(title: str, evals: Sequence[dict], rows: Sequence[dict],
                plots: Sequence[tuple[str, str]], notes: Sequence[str], findings: Sequence | None = None) -> str:
    """The whole page; `plots` is (caption, relative file name); `findings` from `ponder doctor` (None = none run)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>ponder report: {_e(title)}</title>",
           f"<style>{CSS}</style></head><body><h1>ponder report: {_e(title)}</h1>"]
    if notes:
        out.append("<div class=notes><b>Missing or skipped:</b><ul>"
                   + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>")
    if findings is not None:
        out.append(doctor_html(findings))
    if evals:
        out.append("<h2>Evaluation</h2>" + eval_table(evals)
                   + "<p class=ci>Accuracy interval: 95%, from the eval file's accuracy_ci.</p>")
    if plots:
        out.append("<h2>Plots</h2>")
        out += [f"<h3>{_e(cap)}</h3><img src='{_e(name)}' alt='{_e(cap)}'>" for cap, name in plots]
    if rows:
        out.append(f"<h2>Last training step</h2>{last_step_table(rows[-1])}")
    for ev in evals:
        out.append(f"<h2>Example completions: {_e(ev['label'])}</h2>{examples_html(ev)}")
    out.append("</body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------- entry points

def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML page (default RUN_DIR/report/index.html) and its PNGs beside it; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a directory" if run_dir.exists() else "does not exist"
        raise ConfigError(f"run directory {str(run_dir)!r} {what}")
    out = Path(out) if out is not None else run_dir / "report" / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)

    notes: list[str] = []
    rows: list[dict] = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows, bad = read_metrics(metrics)
        notes += bad
        if not rows:
            notes.append("metrics.jsonl has no steps: no training curves")
    else:
        notes.append("metrics.jsonl not found: no training curves")
    evals: list[dict] = []
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        evals, bad = read_evals(eval_dir)
        notes += bad
        if not evals:
            notes.append("eval/ has no readable *.json files: no evaluation results")
    else:
        notes.append("eval/ not found: no evaluation results")

    captions = (
        ("reward and accuracy over steps", plot_reward_accuracy, rows),
        ("thinking length over steps", plot_thinking_length, rows),
        ("training health: self-checking, zero-variance groups, truncation, entropy, KL, clipping",
         plot_health, rows),
        ("accuracy vs thinking tokens, per evaluation", plot_accuracy_vs_thinking, evals),
        ("accuracy per difficulty, per evaluation", plot_accuracy_by_difficulty, evals),
    )
    plots = []
    for caption, plot, data in captions:
        name = plot(data, out.parent) if data else None
        if name:
            plots.append((caption, name))
        elif data:
            notes.append(f"no data for plot: {caption}")

    findings = None
    if rows:
        try:
            findings = diagnose_dir(run_dir)
        except DoctorError as e:
            notes.append(f"doctor could not check the run: {e}")
    out.write_text(render_html(run_dir.resolve().name, evals, rows, plots, notes, findings), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (with metrics.jsonl and/or eval/*.json)")
    parser.add_argument("--out", default=None, help="HTML file to write [default: RUN_DIR/report/index.html]")
    args = parser.parse_args(argv)
    path = write_report(args.run_dir, args.out)
    print(f"report written to {path}")
    return 0
