"""The shape of the answers in `ponder eval --out` files of a code task (nothing is run: ast only).

    python bench/code_answer_shape.py runs/code/he_before.json runs/code/he_after.json

Per file: greedy pass@1, the share of answers with a ```python block, whose code (the last
block, else the whole answer, as the code_tests grader takes it) parses, the share cut off at
the token limit, mean answer tokens, and the failures by kind (a missing `typing` import,
syntax, a failed assert, other).
"""

from __future__ import annotations

import ast
import collections
import json
import re
import sys

from ponder.verifiers.custom import code_of

FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.S)
TYPING = re.compile(r"name '(List|Tuple|Optional|Any|Dict)' is not defined")


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def failure_kind(row: dict) -> str:
    reason = row["reason"]
    if row["correct"]:
        return "pass"
    if TYPING.search(reason):
        return "typing import missing"
    if "SyntaxError" in reason or "IndentationError" in reason:
        return "syntax"
    return "a test failed" if "test failed" in reason else "other"


def shape(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    rows, n = result["samples"], len(result["samples"])
    fenced = sum(bool(FENCE.search(r["completion"])) for r in rows) / n
    parsed = sum(parses(code_of(r["completion"])) for r in rows) / n
    kinds = collections.Counter(failure_kind(r) for r in rows)
    tokens = sum(r["answer_tokens"] for r in rows) / n
    return (f"{path}: n={n} pass@1={result['summary']['accuracy']:.3f} fenced={fenced:.2f} parses={parsed:.2f} "
            f"truncated={result['summary']['truncated_frac']:.2f} answer_tokens={tokens:.1f} {dict(kinds)}")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(shape(name))
