"""Difficulty-aware prompt sampling (after MiMo-7B-RL): prefer prompts that still teach.

A group teaches only when its rewards differ -- its pass rate is strictly between 0 and 1
(a prompt the policy always or never solves gives every sample the same advantage, 0).
With `difficulty_sampling` on, each step draws `pool` x P candidate prompts and keeps P of
them, drawn without replacement with weight

    w = FLOOR + (1 - FLOOR) * informative share of the prompt's recent groups

where "recent" is the last `window` groups of that prompt (its example id) or, for a prompt
not seen yet, of its difficulty bucket (`Example.difficulty`: a procedural task rarely repeats
a prompt, but its difficulty levels recur); a prompt with neither counts as informative. FLOOR
keeps every prompt reachable, so a level that was solved is re-checked now and then.

Departures from MiMo: MiMo filters its data by the SFT model's pass rate before RL and
re-samples a pool of solved problems at 10%; this keeps one running record instead and
weights the draw. The history is a pure function of the run's groups, so the choice is
deterministic given the seed, and it is checkpointed for an exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ponder.rl.rollout import Group
from ponder.tasks.base import Example

FLOOR = 0.1  # weight of a prompt whose recent groups all agreed (solved or hopeless)


@dataclass(frozen=True)
class PassHistory:
    """Recent groups' informativeness per key: key -> tuple of 0/1 flags, newest last."""
    window: int = 8
    records: dict[str, tuple[int, ...]] = field(default_factory=dict)


def keys_of(example: Example) -> tuple[str, str | None]:
    """(the prompt's own key, its difficulty bucket's key or None)."""
    bucket = None if example.difficulty is None else f"difficulty={example.difficulty}"
    return f"id={example.id}", bucket


def is_informative(group: Group) -> bool:
    """Pass rate strictly between 0 and 1 over the group's valid samples."""
    ok = [c for c, v in zip(group.correct, group.valid) if v]
    return 0 < sum(ok) < len(ok)


def record(history: PassHistory, groups: list[Group]) -> PassHistory:
    """`history` with each group appended under its prompt's key and its bucket's key.

    >>> from ponder.core.verdict import Verdict
    >>> ex = Example(id="q1", prompt="1+1=", answer="2", difficulty=1)
    >>> g = Group(ex, (None, None), (Verdict(1.0, "correct"), Verdict(0.0, "wrong")), (1.0, 0.0))
    >>> record(PassHistory(window=2), [g, g, g]).records
    {'id=q1': (1, 1), 'difficulty=1': (1, 1)}
    """
    records = dict(history.records)
    for g in groups:
        flag = int(is_informative(g))
        for key in keys_of(g.example):
            if key is not None:
                records[key] = (records.get(key, ()) + (flag,))[-history.window:]
    return PassHistory(history.window, records)


def informative_score(history: PassHistory, example: Example) -> float:
    """Share of informative groups among the prompt's recent ones (its bucket's if it has none; 1 if neither)."""
    for key in keys_of(example):
        flags = history.records.get(key) if key is not None else None
        if flags:
            return sum(flags) / len(flags)
    return 1.0


def choose(candidates: list[Example], history: PassHistory, n: int, generator: torch.Generator) -> list[Example]:
    """`n` of `candidates`, drawn without replacement with weight FLOOR + (1 - FLOOR) * score."""
    if n >= len(candidates):
        return list(candidates)
    w = torch.tensor([FLOOR + (1 - FLOOR) * informative_score(history, ex) for ex in candidates], dtype=torch.float64)
    picked = torch.multinomial(w, n, replacement=False, generator=generator)
    return [candidates[i] for i in picked.tolist()]
