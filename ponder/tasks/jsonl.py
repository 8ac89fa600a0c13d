"""A task from a JSONL file plus a grader: no code needed.

Each line is an object with `prompt` and `answer` (a string, or any JSON
value, which is stored as JSON text for the json_schema grader), and
optionally `id`, `difficulty`, `split` ("train"/"test"), `completion` (a worked
gold completion -- thinking, tool calls with their `<output>`s, then the answer --
that `gold = N` SFT trains on instead of the bare answer) and any other fields,
which go to `Example.info` (e.g. `tests` and `entry_point` for code_tests).
Without a `split` field, a line belongs to the split given by a hash of its
prompt, so train and test never share a prompt.

The grader is a spec table (see `ponder.verifiers.custom`), a TOML file
holding one, or `module:function` / `file.py:function` naming a reward
function.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ponder.core.config import ConfigError
from ponder.core.io import read_jsonl
from ponder.tasks.base import SPLITS, Example, Task, check_split, split_of
from ponder.core.verdict import Verdict
from ponder.verifiers.custom import (CodeTestsGrader, CombineGrader, Grader, JsonSchemaGrader, PythonGrader, grade, load_function,
                                     load_grader, parse_grader)

_KNOWN = ("id", "prompt", "answer", "difficulty", "split", "completion")


def read_examples(path: str | Path) -> list[tuple[str, Example, str]]:
    """(split, example, "file:line") for every line of a JSONL file; errors name the file and line."""
    ids: dict[str, str] = {}
    out = [(*_example(row, where, int(where.rsplit(":", 1)[1]), ids), where)
           for where, row in read_jsonl(path, "task file")]
    if not out:
        raise ConfigError(f"task file {str(path)!r} has no examples")
    return out


def _example(row, where: str, lineno: int, ids: dict[str, str]) -> tuple[str, Example]:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("prompt", "answer") if k not in row]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}; each line needs prompt and answer")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise ConfigError(f"{where}: `prompt` must be a non-empty string")
    answer = row["answer"] if isinstance(row["answer"], str) else json.dumps(row["answer"])
    ex_id = str(row.get("id", f"line{lineno}"))
    if ex_id in ids:
        raise ConfigError(f"{where}: id {ex_id!r} already used at {ids[ex_id]}")
    ids[ex_id] = where
    difficulty = row.get("difficulty", 1)
    if isinstance(difficulty, bool) or not isinstance(difficulty, int):
        raise ConfigError(f"{where}: `difficulty` must be an integer, got {difficulty!r}")
    split = row.get("split") or split_of(row["prompt"])
    if split not in SPLITS:
        raise ConfigError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    solution = row.get("completion", "")
    if not isinstance(solution, str):
        raise ConfigError(f"{where}: `completion` must be a string (a worked gold completion), "
                          f"got {type(solution).__name__}")
    info = {k: v for k, v in row.items() if k not in _KNOWN}
    return split, Example(id=ex_id, prompt=row["prompt"], answer=answer, difficulty=difficulty, info=info,
                          solution=solution)


def make_grader(grader: Any, base_dir: Path = Path(".")) -> Grader:
    """A grader from a spec dict, a grader object, a .toml path, or a 'module:function' name."""
    if isinstance(grader, dict):
        return parse_grader(grader, base_dir)
    if hasattr(grader, "grade"):
        return grader
    if isinstance(grader, (str, Path)):
        text = str(grader)
        if text.endswith(".toml"):
            try:
                return load_grader(text)
            except ConfigError as e:  # say which file, once
                raise ConfigError(str(e) if text in str(e) else f"grader {text}: {e}") from None
        if ":" in text:
            return PythonGrader(text, load_function(text, base_dir))
    raise ConfigError(f"grader {grader!r} is not a spec table, a .toml file or 'module:function'")


def schemas_of(grader) -> list[dict]:
    """The JSON Schemas a grader checks answers against (a combine grader's parts included)."""
    if isinstance(grader, JsonSchemaGrader):
        return [grader.schema] if grader.schema else []
    if isinstance(grader, CombineGrader):
        return [s for _, g in grader.parts for s in schemas_of(g)]
    return []


def sandboxes_of(grader) -> list[str]:
    """The sandbox backends a grader runs code with (code_tests parts), e.g. ["auto"]; [] when it runs none."""
    if isinstance(grader, CodeTestsGrader):
        return [grader.sandbox]
    if isinstance(grader, CombineGrader):
        return [s for _, g in grader.parts for s in sandboxes_of(g)]
    return []


def check_gold(rows: list[tuple[str, Example, str]], grader) -> None:
    """Every gold answer must satisfy the grader's schema: a gold no answer can match is a
    mistake in the data, found before training, with its file and line."""
    schemas = schemas_of(grader)
    if not schemas:
        return
    import jsonschema
    for _, ex, where in rows:
        try:
            gold = json.loads(ex.answer)
        except json.JSONDecodeError:
            raise ConfigError(f"{where}: the answer is not JSON, but the grader checks answers against a "
                              f"JSON Schema") from None
        for schema in schemas:
            error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(gold))
            if error is not None:
                path = ".".join(map(str, error.absolute_path)) or "(the whole answer)"
                raise ConfigError(f"{where}: the answer does not match the grader's schema at {path}: "
                                  f"{error.message}")


class JsonlTask(Task):
    """Examples from a JSONL file, checked by a grader."""

    def __init__(self, path: str | Path, grader: Any):
        self.path = Path(path)
        self.name = f"jsonl:{self.path.name}"
        rows = read_examples(self.path)
        self.grader = make_grader(grader, self.path.parent)
        check_gold(rows, self.grader)
        self.rows = [(split, ex) for split, ex, _ in rows]

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """Up to `n` examples of `split`, in an order shuffled by `seed` (a file has only so many);
        split "all" gives the file's first `n` lines in order (a held-out file, every line)."""
        if split == "all":
            return [ex for _, ex in self.rows][:n]
        check_split(split)
        pool = [ex for s, ex in self.rows if s == split]
        random.Random(f"{self.path.name}/{split}/{seed}").shuffle(pool)
        return pool[:n]

    def verify(self, completion: str, example: Example) -> Verdict:
        return grade(self.grader, completion, example)
