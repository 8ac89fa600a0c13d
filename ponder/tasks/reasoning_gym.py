"""Any reasoning-gym dataset as a ponder Task, scored by the dataset's own scorer.

`ReasoningGymTask("leg_counting", max_animals=5)` wraps
`reasoning_gym.create_dataset(name, size=..., seed=..., **cfg)`. Train and
test are disjoint twice over: they are generated from different seeds, and
a question whose text hashes to the other split (`split_of`) is dropped, so
no seed can put a test question into training.

Scoring: the answer after `</think>` (the content of a final
`<answer>...</answer>` if the model wrote one) goes to the dataset's
`score_answer(answer, entry)`. By default only a full 1.0 counts
(`partial_credit=False`): many reasoning-gym scorers give 0.01 to any
non-empty answer or string-similarity credit to an answer repeated twice,
which a policy learns to farm. Answers longer than `max_answer_chars`
(default: 200 + 4 x the gold's length) are wrong before scoring. A scorer
that raises or returns something that is not a score in [0, 1] gives
`invalid`.

Some upstream scorers accept degenerate answers outright; run
`ponder probe rg:<dataset>` before training on one.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from ponder.core.config import ConfigError
from ponder.core.think import answer_text
from ponder.tasks.base import Example, Task, check_split, split_of
from ponder.core.verdict import Verdict, correct, invalid, wrong

PREFIX = "rg:"  # registry names look like "rg:leg_counting"
_SEED_STRIDE = 1_000_003  # keeps the seeds of different (split, seed, round) pairs apart
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)


def dataset_names() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _rg():
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError("reasoning-gym tasks need the reasoning-gym package (pip install reasoning-gym)") from None
    return reasoning_gym


class ReasoningGymTask(Task):
    """A reasoning-gym dataset by name; `cfg` goes to the dataset's config."""

    def __init__(self, dataset_name: str, partial_credit: bool = False, max_answer_chars: int | None = None,
                 **cfg: Any):
        rg = _rg()
        if dataset_name not in dataset_names():
            raise ConfigError(f"unknown reasoning-gym dataset {dataset_name!r}; valid: {', '.join(dataset_names())}")
        self.dataset_name, self.partial_credit, self.cfg = dataset_name, partial_credit, dict(cfg)
        self.max_answer_chars = max_answer_chars
        self.name = PREFIX + dataset_name
        try:
            self._scorer = rg.create_dataset(dataset_name, size=1, seed=0, **cfg)
        except (TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"reasoning-gym dataset {dataset_name!r} refused config {cfg!r}: {e}") from None

    def _batch(self, split: str, seed: int, round_: int, size: int) -> list[dict]:
        rg = _rg()
        base = (1 if split == "train" else 2) * 10**9
        ds = rg.create_dataset(self.dataset_name, size=size, seed=base + seed * _SEED_STRIDE + round_ * 7919,
                               **self.cfg)
        return [ds[i] for i in range(size)]

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        check_split(split)
        out, seen = [], set()
        # A share of the generated questions belongs to the other split; draw in rounds until we have n.
        for round_ in range(50):
            if len(out) >= n:
                break
            for entry in self._batch(split, seed, round_, max(8, 2 * (n - len(out)) + 8)):
                q = entry["question"]
                if q in seen or split_of(q) != split:
                    continue
                seen.add(q)
                out.append(self._example(entry))
                if len(out) >= n:
                    break
        if len(out) < n:
            raise ConfigError(f"reasoning-gym {self.dataset_name!r} gave only {len(out)} distinct {split} "
                              f"questions of the {n} asked; ask for fewer or widen its config")
        return out

    def _example(self, entry: dict) -> Example:
        q = entry["question"]
        meta = entry.get("metadata") or {}
        level = meta.get("difficulty") if isinstance(meta, dict) else None
        return Example(
            id=f"{self.dataset_name}/{hashlib.sha256(q.encode()).hexdigest()[:12]}",
            prompt=q,
            answer="" if entry.get("answer") is None else str(entry["answer"]),
            difficulty=level if isinstance(level, int) and not isinstance(level, bool) else 1,
            info={"entry": entry},
        )

    def verify(self, completion: str, example: Example) -> Verdict:
        ans = answer_text(completion)
        if ans is None:
            return wrong("no answer: the thinking was never closed")
        tags = _ANSWER_TAG.findall(ans)
        if tags:
            ans = tags[-1].strip()
        if not ans:
            return wrong("empty answer")
        limit = self.max_answer_chars or 200 + 4 * len(example.answer)
        if len(ans) > limit:
            # Several upstream scorers take the last number or search the text, so a
            # long answer ending in the gold would pass; no real answer is this long.
            return wrong(f"answer has {len(ans)} characters (limit {limit})")
        entry = example.info.get("entry")
        if entry is None:
            return invalid(f"example {example.id!r} carries no reasoning-gym entry")
        try:
            score = self._scorer.score_answer(ans, entry)
        except Exception as e:  # the dataset's scorer failed: mask it, do not call it a 0
            return invalid(f"reasoning-gym scorer raised {type(e).__name__}: {str(e)[:200]}")
        return self._verdict(score)

    def _verdict(self, score: Any) -> Verdict:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            return invalid(f"reasoning-gym scorer returned {score!r}, not a number")
        if not 0.0 <= score <= 1.0:
            return invalid(f"reasoning-gym scorer returned {score!r}, outside [0, 1]")
        if score == 1.0:
            return correct("reasoning-gym scorer: 1.0")
        if self.partial_credit:
            return wrong(f"reasoning-gym scorer: {score:.3g}", score=float(score))
        return wrong(f"reasoning-gym scorer gave {score:.3g} (< 1; partial credit is off)")


def reasoning_gym_task(name: str, **kwargs: Any) -> ReasoningGymTask:
    """Build from a registry name such as "rg:leg_counting"."""
    if not name.startswith(PREFIX):
        raise ConfigError(f"reasoning-gym task names start with {PREFIX!r}, got {name!r}")
    return ReasoningGymTask(name[len(PREFIX):], **kwargs)
