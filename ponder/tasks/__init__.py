"""Built-in tasks and the registry that names them.

`get_task("arithmetic", max_digits=4)` builds a task by name; an unknown
name fails with the list of valid ones.
"""

from __future__ import annotations

import inspect
from typing import Callable

from ponder.core.config import ConfigError
from ponder.tasks.arithmetic import ArithmeticTask
from ponder.tasks.base import Example, Task
from ponder.tasks.countdown import CountdownTask

TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
}


def get_task(name: str, **kwargs) -> Task:
    """A built-in task, `rg:<dataset>` for a reasoning-gym dataset, or a `.jsonl` file (with a grader)."""
    if name.startswith("rg:"):
        from ponder.tasks.reasoning_gym import reasoning_gym_task
        return reasoning_gym_task(name, **kwargs)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}, or rg:<reasoning-gym dataset>")
    factory = TASKS[name]
    params = inspect.signature(factory).parameters
    bad = sorted(set(kwargs) - set(params))
    if bad:
        raise ConfigError(f"task {name!r} has no option(s) {', '.join(bad)}; valid: {', '.join(params)}")
    return factory(**kwargs)


def main(argv: list[str]) -> int:
    """`ponder tasks`: list the built-in tasks with one example each."""
    for name in TASKS:
        ex = get_task(name).examples("train", 1)[0]
        print(f"{name:12s} e.g. {ex.prompt.strip()!r} -> {ex.answer}")
    return 0


__all__ = ["Example", "Task", "TASKS", "get_task"]
