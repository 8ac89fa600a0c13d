"""Overthinking: does more thinking still pay, and how much is spent after the answer is known?

Two views of a pool of sampled completions, per difficulty level:

1. accuracy against thinking length (fixed-width length bins), so a bucket
   where long chains are no more accurate than short ones shows up;
2. the tokens spent after the first correct intermediate answer: the thinking
   already held the gold answer (for arithmetic, a "so N" partial result
   equal to it) and everything after it — self-checks, repeats — could have
   been cut. Reported as tokens and as a share of the thinking.

`ponder overthink MODEL --task T` prints the report; `ponder scale` embeds it.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from ponder.core import config as C
from ponder.tasks.spec import TaskFields, make_task
from ponder.core.config import RunFields, ConfigError, option
from ponder.core.think import THINK_CLOSE, THINK_OPEN

# Arithmetic's column method ends each line with the result so far ("so 105").
DEFAULT_INTERMEDIATE = r"\bso (-?\d+)"


@dataclass(frozen=True)
class Trace:
    """One sampled completion, reduced to what the report needs."""
    difficulty: int
    thinking_tokens: int
    correct: bool
    after_first_correct: int | None  # thinking tokens after the first correct intermediate answer, if any


def tokens_after_first_correct(pieces: list[str], gold: str, pattern: str) -> int | None:
    """Thinking tokens that start after the first intermediate answer equal to `gold`, or None.

    `pieces` are the thinking's tokens, each decoded on its own, so offsets in
    the text map back to tokens without re-encoding it.

    >>> tokens_after_first_correct(list("8+7=15 so 5\\n4+5+1=10 so 105\\ncheck: 57+48=105\\n"), "105",
    ...                            DEFAULT_INTERMEDIATE)
    18
    """
    think = "".join(pieces)
    for m in re.finditer(pattern, think):
        if m.group(1) == gold:
            at, n = 0, 0
            for p in pieces:
                n += at >= m.end()
                at += len(p)
            return n
    return None


def thinking_pieces(ids: list[int], tok, think_ids: tuple[int | None, int | None]) -> list[str]:
    """The thinking's tokens (between `<think>` and `</think>` or the end), each decoded alone."""
    open_id, close_id = think_ids
    if open_id not in ids:
        return []
    a = ids.index(open_id) + 1
    b = ids.index(close_id, a) if close_id in ids[a:] else len(ids)
    return [tok.decode([t], skip_special_tokens=True) for t in ids[a:b]]


def length_bins(traces: list[Trace], width: int) -> list[dict]:
    """Accuracy per thinking-length bin [lo, lo+width)."""
    bins: dict[int, list[bool]] = {}
    for t in traces:
        bins.setdefault(t.thinking_tokens // width * width, []).append(t.correct)
    return [{"thinking_tokens": [lo, lo + width], "n": len(v), "accuracy": mean(v)} for lo, v in sorted(bins.items())]


def report(traces: list[Trace], bin_width: int = 16) -> dict:
    """Per difficulty level: accuracy by thinking length, and tokens after the first correct intermediate answer."""
    if not traces:
        raise ValueError("overthinking report: no traces given")
    out = {}
    for d in sorted({t.difficulty for t in traces}):
        ts = [t for t in traces if t.difficulty == d]
        late = [t for t in ts if t.after_first_correct is not None]
        out[str(d)] = {
            "n": len(ts), "accuracy": mean(t.correct for t in ts),
            "mean_thinking_tokens": mean(t.thinking_tokens for t in ts),
            "accuracy_by_thinking_length": length_bins(ts, bin_width),
            "share_reaching_correct_intermediate": len(late) / len(ts),
            "mean_tokens_after_first_correct": mean(t.after_first_correct for t in late) if late else None,
            "share_of_thinking_after_first_correct": (
                sum(t.after_first_correct for t in late) / max(1, sum(t.thinking_tokens for t in late)) if late else None),
        }
    return out


def traces_of(samples, examples, verdicts, tok, pattern: str = DEFAULT_INTERMEDIATE) -> list[Trace]:
    """Traces from a pool: samples[p] are problem p's completions, verdicts[p] their correctness."""
    vocab = tok.get_vocab()
    think_ids = (vocab.get(THINK_OPEN), vocab.get(THINK_CLOSE))
    return [Trace(ex.difficulty, s.thinking_tokens, ok,
                  tokens_after_first_correct(thinking_pieces(list(s.ids), tok, think_ids), ex.answer, pattern))
            for ex, group, oks in zip(examples, samples, verdicts) for s, ok in zip(group, oks)]


def format_report(rep: dict) -> str:
    lines = [f"{'difficulty':>10s} {'n':>5s} {'acc':>6s} {'think':>6s} {'reach':>6s} {'after':>6s} {'share':>6s}  acc by length"]
    for d, r in rep.items():
        after = r["mean_tokens_after_first_correct"]
        share = r["share_of_thinking_after_first_correct"]
        bins = " ".join(f"{b['thinking_tokens'][0]}:{b['accuracy']:.2f}({b['n']})" for b in r["accuracy_by_thinking_length"])
        lines.append(f"{d:>10s} {r['n']:5d} {r['accuracy']:6.3f} {r['mean_thinking_tokens']:6.1f} "
                     f"{r['share_reaching_correct_intermediate']:6.2f} {after if after is None else round(after, 1)!s:>6s} "
                     f"{share if share is None else round(share, 2)!s:>6s}  {bins}")
    return "\n".join(lines)


@dataclass(frozen=True)
class OverthinkConfig(RunFields, TaskFields):
    model: str = option("tiny", "HF model folder")
    problems: int = option(200, "held-out problems")
    samples: int = option(4, "samples per problem")
    temperature: float = option(1.0, "sampling temperature")
    max_new_tokens: int = option(128, "completion token limit")
    bin_width: int = option(16, "width of the thinking-length bins, in tokens")
    intermediate_pattern: str = option(DEFAULT_INTERMEDIATE, "regex whose group 1 is an intermediate answer in the thinking")
    json: str = option("", "also write the report here")

    def __post_init__(self):
        if min(self.problems, self.samples, self.bin_width) < 1:
            raise ConfigError(f"problems, samples and bin_width must be >= 1, got "
                              f"{self.problems}, {self.samples}, {self.bin_width}")
        try:
            if re.compile(self.intermediate_pattern).groups < 1:
                raise ConfigError(f"intermediate_pattern {self.intermediate_pattern!r} needs a capture group")
        except re.error as e:
            raise ConfigError(f"intermediate_pattern {self.intermediate_pattern!r} is not a regex: {e}") from None


def main(argv: list[str]) -> int:
    from ponder.engine.engine import Engine, SamplingParams
    from ponder.models.model import load_model
    from ponder.rl.rollout import rollout
    ap = argparse.ArgumentParser(prog="ponder overthink", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_path", nargs="?", help="HF model folder (same as --model)")
    C.add_arguments(ap, OverthinkConfig)
    args = ap.parse_args(argv)
    cfg = C.from_args(OverthinkConfig, args, model=args.model_path)
    model, tok = load_model(cfg.model, device=cfg.device)
    task = make_task(cfg, tok)  # the same prompts as train and eval
    examples = task.examples("test", cfg.problems, seed=cfg.seed)
    groups = rollout(Engine(model, tok), task, examples, cfg.samples,
                     SamplingParams(cfg.max_new_tokens, cfg.temperature), seed=cfg.seed).groups
    pool, verdicts = [list(g.samples) for g in groups], [g.correct for g in groups]
    rep = report(traces_of(pool, examples, verdicts, tok, cfg.intermediate_pattern), cfg.bin_width)
    print(format_report(rep))
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(rep, indent=1))
    return 0
