"""Frozen dataclass configs, loaded from a TOML recipe and overridden from the CLI.

Each entry point has one flat config class. Its fields are declared with
`option(default, help, choices=...)`; from that single declaration come the
command-line flags (`--field-name VALUE`), the keys a TOML recipe may use,
and the validation: an unknown key, a value of the wrong type or a value
outside `choices` fails at once with a message naming the valid ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from dataclasses import dataclass
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A recipe or flag that cannot be used; the message says why and what is valid."""


def option(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field with a one-line help text and optional allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def check_choices(cfg: Any) -> None:
    """Call from `__post_init__`: every field with `choices` must hold one of them."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{type(cfg).__name__}.{f.name} = {value!r} is not valid; choose one of: "
                + ", ".join(map(str, choices))
            )


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(cls, name: str, typ: type, value: Any) -> Any:
    """Convert a TOML or CLI value to the field's type, or fail naming the field."""
    where = f"{cls.__name__}.{name}"
    if typ is Any:  # e.g. a grader: a file name or an inline table
        return value
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                low = text.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return low in ("true", "1", "yes")
            if typ is int:
                return int(text)
            if typ is float:
                return float(text)
        except ValueError:
            raise ConfigError(f"{where} expects {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    origin = typing.get_origin(typ)
    if origin is None and isinstance(typ, type) and not isinstance(value, typ):
        raise ConfigError(f"{where} expects {typ.__name__}, got {value!r} ({type(value).__name__})")
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{where} expects int, got {value!r}")
    return value


def build(cls: type[C], values: dict[str, Any]) -> C:
    """Instantiate `cls` from a dict, refusing unknown keys and ill-typed values."""
    types = _field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s): {', '.join(unknown)}; valid keys: {', '.join(types)}"
        )
    kwargs = {k: _coerce(cls, k, types[k], v) for k, v in values.items()}
    return cls(**kwargs)


def load_toml(path: str | Path, section: str | None = None, known: Any = None) -> dict[str, Any]:
    """A recipe's values. With `section`, what one verb reads: its own [section], else the
    top-level keys (not tables); a top-level [task] table holds for every verb. A pipeline
    recipe ([[stage]] tables) gives a single verb its [task] table and those of the
    [pipeline] table's shared settings that the verb has (`known`: its config's field names),
    so `ponder eval RECIPE --model M --data FILE.jsonl` grades as the pipeline's evals do."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {str(p)!r} is not valid TOML: {e}") from None
    if section is not None:
        # a verb reads its own [section], or else the top-level keys; other verbs' tables are not
        # its business, and a top-level [task] table holds for every verb of the recipe
        shared = {"task": data["task"]} if isinstance(data.get("task"), dict) else {}
        if isinstance(data.get(section), dict):
            own = data[section]
        elif isinstance(data.get("stage"), list):  # a pipeline recipe: its shared settings, not its stages
            table = data.get("pipeline") if isinstance(data.get("pipeline"), dict) else {}
            own = {k: v for k, v in table.items() if k in PIPELINE_SHARED and (known is None or k in known)}
            if known is not None and "samples" in known:  # an eval grades as the pipeline's evals: greedy unless
                own["samples"] = table.get("eval_samples", PIPELINE_EVAL_SAMPLES)  # eval_samples says more
        else:
            own = {k: v for k, v in data.items() if not isinstance(v, dict)}
        data = {**shared, **own}
    return grader_near_recipe(flatten_task_table(data), p.parent)


def grader_near_recipe(values: dict[str, Any], here: Path) -> dict[str, Any]:
    """A grader file named in a recipe is looked up beside the recipe first (then as given),
    so `grader = "my_grader.toml"` works from any working directory."""
    grader = values.get("grader")
    if isinstance(grader, str) and grader.endswith(".toml") and not Path(grader).is_absolute() \
            and (here / grader).is_file():
        return {**values, "grader": str(here / grader)}
    return values


# [pipeline] keys a single verb run on a pipeline recipe takes (those its config has)
PIPELINE_SHARED = ("seed", "max_new_tokens", "threads", "device", "progress")
PIPELINE_EVAL_SAMPLES = 1  # [pipeline] eval_samples when a recipe leaves it out (PipelineConfig's default too)


# A recipe's `[task]` table key -> the config field it sets (see ponder.tasks.spec.TaskFields).
TASK_TABLE_KEYS = {"name": "task", "data": "task", "options": "task_options", "grader": "grader",
                   "template": "template", "system": "system_prompt", "format": "prompt_format"}


def flatten_task_table(values: dict[str, Any]) -> dict[str, Any]:
    """A recipe's `[task]` table spread into the config fields (`data` -> `task`, ...).

    >>> flatten_task_table({"task": {"data": "d.jsonl", "grader": "g.toml"}, "steps": 3})
    {'steps': 3, 'task': 'd.jsonl', 'grader': 'g.toml'}
    """
    table = values.get("task")
    if not isinstance(table, dict):
        return values
    unknown = sorted(set(table) - set(TASK_TABLE_KEYS))
    if unknown:
        raise ConfigError(f"[task] has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(TASK_TABLE_KEYS)}")
    if "name" in table and "data" in table:
        raise ConfigError("[task] takes `name` (a built-in or rg: task) or `data` (a .jsonl file), not both")
    out = {k: v for k, v in values.items() if k != "task"}
    out.update({TASK_TABLE_KEYS[k]: v for k, v in table.items()})
    return out


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field-name` flag per config field; defaults stay None so a recipe can supply them."""
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" (one of: {', '.join(map(str, choices))})"
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar="V",
            help=f"{help_text} [default: {default!r}]",
        )


def command_flags(cfg, skip: tuple[str, ...] = ("out",)) -> str:
    """The `--field value` flags that rebuild `cfg` from its class's defaults (fields in `skip` left out).

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     steps: int = 10
    ...     p_calc: float = 0.0
    ...     out: str = "x"
    >>> command_flags(Demo(p_calc=0.2, out="y"))
    '--p-calc 0.2'
    """
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in skip and f.default is not dataclasses.MISSING and value != f.default:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            out.append(f"--{f.name.replace('_', '-')} {shlex.quote(text)}")
    return " ".join(out)


def from_args(cls: type[C], args: argparse.Namespace, recipe: str | None = None,
              section: str | None = None, **fixed: Any) -> C:
    """Defaults < TOML recipe < command-line flags < `fixed` keyword arguments."""
    values: dict[str, Any] = {}
    if recipe:
        values.update(load_toml(recipe, section, known={f.name for f in dataclasses.fields(cls)}))
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    values.update({k: v for k, v in fixed.items() if v is not None})
    return build(cls, values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


DEVICES = ("auto", "cpu", "cuda")  # see ponder.core.device


@dataclass(frozen=True)
class RunFields:
    """Fields every run's config shares (declared once)."""
    seed: int = option(0, "seed of everything random in the run (problems, sampling, data order, weights)")
    threads: int = option(0, "torch CPU threads (0 = torch's default; results are exactly repeatable at a "
                          "fixed count)")
    device: str = option("auto", "where the model runs: auto (a GPU when torch sees one, else the CPU), "
                         "cpu or cuda", choices=DEVICES)


def set_threads(n: int) -> None:
    """Use `n` torch CPU threads (0 leaves torch's default)."""
    if n:
        import torch
        torch.set_num_threads(n)
