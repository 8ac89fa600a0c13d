"""A task is data plus a verifier.

`Task.examples(split, n, seed)` gives prompts with their gold answers;
`Task.verify(completion, example)` checks one completion and returns a
`Verdict`. Train and test splits are disjoint by construction: every
problem is assigned to a split by a hash of its text, so no seed can make a
test problem appear in training.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping

from ponder.core.verdict import Verdict

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SPLITS = ("train", "test")
TEST_SHARE = 0.2  # fraction of the problem space that belongs to the test split


@dataclass(frozen=True)
class Example:
    id: str  # stable id, unique within a task
    prompt: str  # what the model sees
    answer: str  # gold answer, as text
    difficulty: int = 1  # task-specific level, higher is harder
    info: Mapping[str, Any] = field(default_factory=dict)  # task-specific data


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


def answer_text(completion: str) -> str | None:
    """The answer part of a completion: the text after the last `</think>`.

    Returns None when the completion never closed its thinking.

    >>> answer_text("<think>2+2=4</think>4")
    '4'
    >>> answer_text("<think>still thinking") is None
    True
    """
    i = completion.rfind(THINK_CLOSE)
    if i < 0:
        return None
    return completion[i + len(THINK_CLOSE):].strip()


def thinking_text(completion: str) -> str:
    """The text between the first `<think>` and the following `</think>` (or the end)."""
    i = completion.find(THINK_OPEN)
    if i < 0:
        return ""
    j = completion.find(THINK_CLOSE, i)
    return completion[i + len(THINK_OPEN): j if j >= 0 else len(completion)]


_FORMAT = re.compile(r"^\s*<think>(?:(?!<think>|</think>).)*</think>\s*\S(?:(?!<think>|</think>).)*$", re.S)


def format_score(completion: str) -> float:
    """1.0 for exactly one `<think>…</think>` block followed by a non-empty answer.

    >>> format_score("<think>a</think>42"), format_score("42"), format_score("<think>a</think>")
    (1.0, 0.0, 0.0)
    """
    return 1.0 if _FORMAT.match(completion) else 0.0


class Task(ABC):
    """Procedural or file-backed source of examples, with a verifier."""

    name: str = "task"

    @abstractmethod
    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """`n` examples of `split` ("train" or "test"), deterministic in `seed`."""

    @abstractmethod
    def verify(self, completion: str, example: Example) -> Verdict:
        """Check the answer in `completion` against `example`; never raises."""
