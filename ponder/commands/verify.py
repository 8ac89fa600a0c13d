"""`ponder verify KIND ...`: run a verifier on given answers and print one verdict per line.

    ponder verify math --gold '\\frac12' --answer '0.5' --answer '\\boxed{1/3}'
    ponder verify math --gold 42 --answers-file answers.txt --json
    ponder verify json --schema invoice.schema.json --gold gold.json --answer '{"total": 3}'
    ponder verify code --solution sol.py --tests tests.py
    ponder verify task --task arithmetic --id 'add:99+45' --completion '<think>…</think>144'
    ponder verify task --task data.jsonl --grader grader.toml --completions completions.jsonl

Exit status: 0 when every verdict is correct, 1 when any is wrong, 2 when
any is invalid (the checker could not judge) or the input is bad.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from ponder.core.config import ConfigError, add_arguments, from_args
from ponder.core.io import read_jsonl
from ponder.tasks.base import SPLITS, Example, Task
from ponder.core.verdict import Verdict
from ponder.tasks.spec import build_task

EXIT_CODES = {"correct": 0, "wrong": 1, "invalid": 2}


def format_verdict(v: Verdict, as_json: bool, **extra: Any) -> str:
    if as_json:
        return json.dumps({**extra, "score": v.score, "status": v.status, "reason": v.reason})
    label = " ".join(f"{k}={val}" for k, val in extra.items())
    return (f"{label}: " if label else "") + f"{v.status} (score {v.score:g}): {v.reason}"


def _exit_code(verdicts: list[Verdict]) -> int:
    return max((EXIT_CODES[v.status] for v in verdicts), default=2)


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path!r}: {getattr(e, 'strerror', None) or e}") from None


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(_read(path, what))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {path!r} is not valid JSON: {e}") from None


# ------------------------------------------------------------------ kinds

def _math(argv: list[str]) -> int:
    from ponder.verifiers.math import MathConfig, verify_math_many

    p = argparse.ArgumentParser(prog="ponder verify math", description="Math answers vs a gold answer (Math-Verify).")
    p.add_argument("--gold", required=True, help="gold answer (LaTeX or plain)")
    p.add_argument("--answer", action="append", default=[], help="an answer text; repeatable")
    p.add_argument("--answers-file", help="one answer per line; or a .jsonl of strings or {answer, gold} objects")
    p.add_argument("--json", action="store_true", help="one JSON object per verdict")
    add_arguments(p, MathConfig)
    a = p.parse_args(argv)
    cfg = from_args(MathConfig, a)
    pairs = [(ans, a.gold) for ans in a.answer]
    if a.answers_file:
        pairs += _answers_file(a.answers_file, a.gold)
    if not pairs:
        raise ConfigError("give at least one --answer or an --answers-file")
    verdicts = verify_math_many(pairs, cfg)
    for i, v in enumerate(verdicts):
        print(format_verdict(v, a.json, index=i) if len(verdicts) > 1 else format_verdict(v, a.json))
    return _exit_code(verdicts)


def _answers_file(path: str, gold: str) -> list[tuple[str, str]]:
    if not path.endswith(".jsonl"):
        return [(line, gold) for line in _read(path, "answers file").splitlines() if line.strip()]
    out = []
    for where, row in read_jsonl(path, "answers file"):
        if isinstance(row, str):
            out.append((row, gold))
        elif isinstance(row, dict) and isinstance(row.get("answer"), str):
            out.append((row["answer"], str(row.get("gold", gold))))
        else:
            raise ConfigError(f"{where}: expected a string or an object with an `answer` string")
    return out


def _json(argv: list[str]) -> int:
    from ponder.verifiers.structured import JsonConfig, verify_json

    p = argparse.ArgumentParser(prog="ponder verify json", description="JSON answers: schema and per-field check.")
    p.add_argument("--schema", help="JSON Schema file")
    p.add_argument("--gold", help="gold JSON file to compare field by field")
    p.add_argument("--answer", action="append", default=[], help="an answer text; repeatable")
    p.add_argument("--answer-file", action="append", default=[], help="a file holding one answer; repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object per verdict")
    add_arguments(p, JsonConfig)
    a = p.parse_args(argv)
    cfg = from_args(JsonConfig, a)
    if not a.schema and not a.gold:
        raise ConfigError("give --schema, --gold or both")
    schema = _read_json(a.schema, "schema file") if a.schema else None
    gold = _read_json(a.gold, "gold file") if a.gold else None
    answers = a.answer + [_read(f, "answer file") for f in a.answer_file]
    if not answers:
        raise ConfigError("give at least one --answer or --answer-file")
    verdicts = [verify_json(ans, schema, gold, cfg) for ans in answers]
    for i, v in enumerate(verdicts):
        print(format_verdict(v, a.json, index=i) if len(verdicts) > 1 else format_verdict(v, a.json))
    return _exit_code(verdicts)


def _code(argv: list[str]) -> int:
    from ponder.verifiers.code import main as code_main

    return code_main(argv)


def _task(argv: list[str]) -> int:
    from ponder.tasks.probe import parse_task_args


    p = argparse.ArgumentParser(prog="ponder verify task", description="Completions checked by a task's verifier.")
    p.add_argument("--task", required=True, help="task name (arithmetic, countdown, rg:<dataset>) or a .jsonl file")
    p.add_argument("--grader", help="grader for a .jsonl task: a .toml spec or module:function")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="task option, repeatable")
    p.add_argument("--id", help="example id (with --completion)")
    p.add_argument("--completion", help="the full completion, thinking included")
    p.add_argument("--completions", help='a .jsonl of {"id": ..., "completion": ...} objects')
    p.add_argument("--seed", type=int, default=0, help="seed the examples were drawn with")
    p.add_argument("--search", type=int, default=2000, help="examples per split searched for the ids")
    p.add_argument("--json", action="store_true", help="one JSON object per verdict")
    a = p.parse_args(argv)
    task = build_task(a.task, parse_task_args(a.arg), a.grader or "")
    rows: list[tuple[str, str]] = []
    if a.completion is not None:
        if not a.id:
            raise ConfigError("--completion needs --id")
        rows.append((a.id, a.completion))
    if a.completions:
        rows += _completions_file(a.completions)
    if not rows:
        raise ConfigError("give --id with --completion, or --completions FILE")
    find = _example_finder(task, a.seed, a.search)
    verdicts = []
    for ex_id, completion in rows:
        ex = find(ex_id)
        v = task.verify(completion, ex)
        verdicts.append(v)
        print(format_verdict(v, a.json, id=ex_id))
    return _exit_code(verdicts)


def _completions_file(path: str) -> list[tuple[str, str]]:
    out = []
    for where, row in read_jsonl(path, "completions file"):
        if not (isinstance(row, dict) and isinstance(row.get("completion"), str) and "id" in row):
            raise ConfigError(f"{where}: expected an object with `id` and a `completion` string")
        out.append((str(row["id"]), row["completion"]))
    return out


def _example_finder(task: Task, seed: int, search: int) -> Callable[[str], Example]:
    cache: dict[str, Example] = {}

    def find(ex_id: str) -> Example:
        if not cache:
            for split in SPLITS:
                try:
                    cache.update({e.id: e for e in task.examples(split, search, seed)})
                except ConfigError:  # a small task has fewer than `search` problems in a split
                    cache.update({e.id: e for e in task.examples(split, max(1, search // 10), seed)})
        if ex_id not in cache:
            sample = ", ".join(list(cache)[:3])
            raise ConfigError(f"no example with id {ex_id!r} in {task.name} (seed {seed}, {search} per split); "
                              f"ids look like: {sample}")
        return cache[ex_id]

    return find


KINDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "math": (_math, "math answers vs a gold answer (Math-Verify, killable workers)"),
    "json": (_json, "JSON answers vs a JSON Schema and/or a gold object"),
    "code": (_code, "a Python solution vs unit tests, in a sandbox"),
    "task": (_task, "completions checked by a task's own verifier"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nkinds:\n" + "\n".join(f"  {k:5s} {desc}" for k, (_, desc) in KINDS.items()))
        return 0 if argv else 2
    kind, rest = argv[0], argv[1:]
    if kind not in KINDS:
        print(f"ponder verify: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    return KINDS[kind][0](rest)
