"""The result of checking one completion: a score, a status and a reason.

Every verifier in ponder returns a `Verdict`, never a bare float, so that a
verifier that crashed (`invalid`) can be told apart from a wrong answer and
masked out of training instead of silently becoming reward 0.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("correct", "wrong", "invalid")


@dataclass(frozen=True)
class Verdict:
    score: float  # in [0, 1]; partial credit allowed
    status: str  # one of STATUSES
    reason: str = ""  # short, human-readable

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Verdict status {self.status!r} is not one of {STATUSES}")
        if not (0.0 <= self.score <= 1.0):
            raise ValueError(f"Verdict score {self.score!r} is outside [0, 1]")

    @property
    def ok(self) -> bool:
        return self.status == "correct"


def correct(reason: str = "matches", score: float = 1.0) -> Verdict:
    return Verdict(score, "correct", reason)


def wrong(reason: str, score: float = 0.0) -> Verdict:
    return Verdict(score, "wrong", reason)


def invalid(reason: str) -> Verdict:
    return Verdict(0.0, "invalid", reason)
