"""A task is data plus a verifier.

`Task.examples(split, n, seed)` gives prompts with their gold answers;
`Task.verify(completion, example)` checks one completion and returns a
`Verdict`. Train and test splits are disjoint by construction: every
problem is assigned to a split by a hash of its text, so no seed can make a
test problem appear in training.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

from ponder.core.think import THINK_CLOSE, THINK_OPEN, answer_text, format_score, thinking_text  # noqa: F401
from ponder.core.example import Example
from ponder.core.verdict import Verdict

SPLITS = ("train", "test")
TEST_SHARE = 0.2  # fraction of the problem space that belongs to the test split


def split_of(key: str) -> str:
    """Which split a problem belongs to, from a hash of its canonical text.

    >>> split_of("12+34") in SPLITS
    True
    """
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "test" if (h % 10_000) < TEST_SHARE * 10_000 else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


class Task(ABC):
    """Procedural or file-backed source of examples, with a verifier."""

    name: str = "task"

    @abstractmethod
    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split` ("train" or "test"), deterministic in `seed`."""

    @abstractmethod
    def verify(self, completion: str, example: Example) -> Verdict:
        """Check the answer in `completion` against `example`; never raises."""


# the think format lives in ponder.core.think; these names stay importable from here
__all__ = ["Example", "Task", "SPLITS", "TEST_SHARE", "split_of", "check_split",
           "THINK_OPEN", "THINK_CLOSE", "answer_text", "thinking_text", "format_score"]
