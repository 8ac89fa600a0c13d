"""Verify many (completion, example) pairs at once, concurrently, losing none."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ponder.core.verdict import Verdict, invalid
from typing import Protocol

from ponder.core.example import Example


class Task(Protocol):
    """Anything with a verifier (a `ponder.tasks.base.Task`)."""

    def verify(self, completion: str, example: Example) -> Verdict: ...

VERIFY_THREADS = 8  # threads only wait: math checks run in worker processes, code in sandboxes


def verify_batch(task: Task, completions: list[str], examples: list[Example],
                 threads: int = VERIFY_THREADS) -> list[Verdict]:
    """Verdicts for (completion, example) pairs, in order, checked concurrently.

    Threads suffice: math checks run in worker processes and code in sandboxed
    subprocesses, so the threads only wait. A trainer can submit this to an
    executor and keep generating while it runs. A verifier that raises gives
    `invalid` for that pair instead of losing the batch.
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions for {len(examples)} examples")

    def one(pair: tuple[str, Example]) -> Verdict:
        try:
            return task.verify(*pair)
        except Exception as e:  # Task.verify must not raise; if it does, mask the pair
            return invalid(f"verify raised {type(e).__name__}: {str(e)[:200]}")

    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        return list(ex.map(one, zip(completions, examples)))
