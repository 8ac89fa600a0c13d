"""Tasks: data plus a verifier. `ponder.tasks.spec` names and builds them.

`get_task("arithmetic", max_digits=4)` builds a built-in or `rg:` task by name;
an unknown name fails with the list of valid ones. For a JSONL file with a
grader, and for the prompt format, use `ponder.tasks.spec.build_task` /
`make_task`, which every verb calls.
"""

from __future__ import annotations

from ponder.tasks.base import Example, Task
from ponder.tasks.spec import BUILTIN as TASKS
from ponder.tasks.spec import build_task


def get_task(name: str, **kwargs) -> Task:
    """A task by name with its options as keyword arguments."""
    return build_task(name, kwargs)


__all__ = ["Example", "Task", "TASKS", "get_task"]
