"""One way to name a task, the same in every verb and recipe.

A task is named by

- a built-in name (`arithmetic`, `countdown`, see `ponder tasks`) with options
  (`task_options = "max_digits=5 ops=add,mul"`),
- `rg:<dataset>` for a reasoning-gym dataset, or
- a JSONL file of `{"prompt": ..., "answer": ...}` lines with a grader: a grader
  TOML, an inline grader table, or `module:function` / `file.py:function`.

On the command line: `--task data.jsonl --grader grader.toml`. In a recipe a
`[task]` table may hold the same, with the prompt template that wraps each
line's document and the chat settings:

    [task]
    data = "invoices.jsonl"          # or name = "arithmetic", options = "max_digits=5"
    grader = "invoice_grader.toml"   # or an inline [task.grader] table
    template = "Extract the fields as JSON.\\n\\n{prompt}"
    format = "chat"                  # raw | chat | chat_think | auto
    system = "You extract invoice fields."

`TaskFields` declares these fields once for every verb's config; `make_task`
builds the task and applies the prompt format in one place, so train, eval,
collect, sft, scale, train-prm, overthink and pipeline all see the same prompts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable

from ponder.core.config import ConfigError, option
from ponder.core.verdict import Verdict
from ponder.tasks.arithmetic import ArithmeticTask
from ponder.tasks.base import Example, Task
from ponder.tasks.chat import PROMPT_FORMATS, adapt_task
from ponder.tasks.countdown import CountdownTask

BUILTIN: dict[str, Callable[..., Task]] = {
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
}
PROMPT_SLOT = "{prompt}"


@dataclass(frozen=True)
class TaskFields:
    """The task fields every verb's config shares (declared once)."""
    task: str = option("arithmetic", "task: a built-in name (see `ponder tasks`), rg:<reasoning-gym dataset>, "
                       "or a .jsonl file of {prompt, answer} lines (with grader)")
    task_options: str = option("", "task options as 'key=value key=value', e.g. 'max_digits=5 ops=add,mul'")
    grader: Any = option("", "grader of a .jsonl task: a grader .toml, an inline table (recipe), "
                         "or module:function / file.py:function")
    template: str = option("", "prompt template wrapping each line's document; must contain {prompt} "
                           "(empty = the prompt as it is)")
    system_prompt: str = option("", "system prompt for chat formats (empty = the template's default)")
    prompt_format: str = option("auto", "how prompts reach the model: raw text, the chat template (chat), or the "
                                "chat template with a <think> section (chat_think); auto = chat when the "
                                "tokenizer has a template", choices=PROMPT_FORMATS)


TASK_FIELDS = tuple(TaskFields.__dataclass_fields__)


def parse_task_options(text: str) -> dict:
    """'max_digits=5 ops=add,mul' -> {'max_digits': 5, 'ops': 'add,mul'} (ints and floats converted).

    >>> parse_task_options("max_digits=5 ops=add,mul scale=0.5")
    {'max_digits': 5, 'ops': 'add,mul', 'scale': 0.5}
    """
    out = {}
    for item in text.split():
        if "=" not in item:
            raise ConfigError(f"task option {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                pass
        out[k] = v
    return out


def is_file_task(name: str) -> bool:
    return name.endswith(".jsonl") or name.startswith("jsonl:")


def build_task(name: str, options: str | dict = "", grader: Any = "", template: str = "") -> Task:
    """The task a name stands for, before any prompt format (see the module docstring)."""
    kwargs = parse_task_options(options) if isinstance(options, str) else dict(options)
    if name.startswith("@"):
        raise ConfigError(f"task {name!r} names the output of a pipeline stage, which only `ponder pipeline` "
                          f"knows; outside it give the file: --task FILE.jsonl (or, for ponder eval, "
                          f"--data FILE.jsonl)")
    if is_file_task(name):
        from ponder.tasks.jsonl import JsonlTask
        if not grader:
            raise ConfigError(f"task file {name!r} needs a grader: --grader GRADER.toml (or module:function), "
                              f"or `grader` in the recipe's [task] table")
        if kwargs:
            raise ConfigError(f"a .jsonl task takes no task options, got {', '.join(kwargs)}")
        task: Task = JsonlTask(name.removeprefix("jsonl:"), grader)
    elif grader:
        raise ConfigError(f"a grader is for a .jsonl task; task {name!r} has its own verifier")
    elif name.startswith("rg:"):
        from ponder.tasks.reasoning_gym import reasoning_gym_task
        task = reasoning_gym_task(name, **kwargs)
    else:
        task = _builtin(name, kwargs)
    return TemplatedTask(task, template) if template else task


def _builtin(name: str, kwargs: dict) -> Task:
    if name not in BUILTIN:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(BUILTIN)}, rg:<reasoning-gym dataset>, "
                          f"or a .jsonl file with a grader (see `ponder tasks`)")
    factory = BUILTIN[name]
    params = inspect.signature(factory).parameters
    bad = sorted(set(kwargs) - set(params))
    if bad:
        raise ConfigError(f"task {name!r} has no option(s) {', '.join(bad)}; valid: {', '.join(params)}")
    return factory(**kwargs)


def make_task(cfg: Any, tokenizer=None) -> Task:
    """The task of a config holding `TaskFields`, with its prompt format applied for `tokenizer`
    (the one place where prompts get their format: every verb calls this)."""
    task = build_task(cfg.task, cfg.task_options, cfg.grader, cfg.template)
    return task if tokenizer is None else formatted(task, tokenizer, cfg)


def formatted(task: Task, tokenizer, cfg: Any) -> Task:
    """`task` with `cfg`'s prompt format (raw, chat template, chat with <think>) and system prompt."""
    return adapt_task(task, tokenizer, cfg.prompt_format, system=cfg.system_prompt or None)


def sandbox_lines(task: Task) -> list[str]:
    """What a command prints at start-up when the task runs untrusted code: which sandbox holds it."""
    while hasattr(task, "inner"):  # through the prompt-format and template wrappers
        task = task.inner
    from ponder.tasks.jsonl import sandboxes_of
    from ponder.verifiers.sandbox import describe
    return [describe(b) for b in dict.fromkeys(sandboxes_of(getattr(task, "grader", None)))]


def task_fields(cfg: Any) -> dict:
    """The TaskFields of a config as a dict (to hand the same task to another stage)."""
    return {f: getattr(cfg, f) for f in TASK_FIELDS}


class TemplatedTask(Task):
    """Each prompt (a raw document) wrapped in a template with a `{prompt}` slot.

    The verifier sees the example as the file has it; `info["document"]` keeps the
    raw document so a probe can check that copying it earns nothing."""

    literal = True  # the prompt is a finished instruction: a chat format sends it as it is

    def __init__(self, inner: Task, template: str):
        if PROMPT_SLOT not in template:
            raise ConfigError(f"template {template[:60]!r} has no {PROMPT_SLOT} slot for the document")
        self.inner, self.template = inner, template
        self.name = inner.name

    def wrap(self, ex: Example) -> Example:
        return replace(ex, prompt=self.template.replace(PROMPT_SLOT, ex.prompt),
                       info={**ex.info, "document": ex.prompt})

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        return [self.wrap(ex) for ex in self.inner.examples(split, n, seed)]

    def verify(self, completion: str, example: Example) -> Verdict:
        return self.inner.verify(completion, example)
