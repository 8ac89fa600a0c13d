"""Structured output: parse JSON from an answer, validate it against a JSON Schema,
and compare it field by field with a gold object.

The score with a gold object is the mean of per-field scores (nested objects
are flattened to dotted paths, lists are compared whole), so an answer that
gets 3 of 4 invoice fields right earns 0.75 and the reason names the field it
missed. Validation is the `jsonschema` library with the schema's own draft.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ponder.core.config import ConfigError, option
from ponder.core.verdict import Verdict, correct, invalid, wrong


@dataclass(frozen=True)
class JsonConfig:
    rel_tol: float = option(0.0, "numbers within this relative tolerance of the gold field count as equal")
    abs_tol: float = option(0.0, "numbers within this absolute tolerance of the gold field count as equal")
    case_sensitive: bool = option(True, "compare string fields case-sensitively")
    normalize_space: bool = option(False, "compare string fields after trimming and collapsing runs of whitespace")
    max_chars: int = option(200_000, "longer answers are wrong without parsing")

    def __post_init__(self):
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ConfigError(f"JsonConfig tolerances must be >= 0, got rel_tol={self.rel_tol}, abs_tol={self.abs_tol}")


@dataclass(frozen=True)
class FieldScore:
    path: str  # dotted path into the gold object, "$" for a non-object gold
    score: float  # 1.0 equal, 0.0 otherwise
    reason: str  # empty when equal


_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.S)


def parse_json(text: str | None) -> tuple[Any, str | None]:
    """(value, None) for JSON found in the answer, or (None, why not).

    The whole answer must be JSON, or be a fenced code block holding it; several
    fenced blocks that disagree are refused rather than picking one.

    >>> parse_json('{"a": 1}'), parse_json('Here:\\n```json\\n[1, 2]\\n```')
    (({'a': 1}, None), ([1, 2], None))
    >>> parse_json("no json here")[1]
    'answer is not JSON: Expecting value at line 1 column 1'
    """
    if text is None:
        return None, "no answer: the thinking was never closed"
    text = text.strip()
    if not text:
        return None, "empty answer"
    blocks = [b.strip() for b in _FENCE.findall(text)]
    if blocks:
        if len(set(blocks)) > 1:
            return None, f"{len(set(blocks))} different fenced JSON blocks"
        text = blocks[0]
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"answer is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except RecursionError:
        return None, "answer JSON is nested too deeply"


def schema_errors(value: Any, schema: dict) -> list[str]:
    """Messages for every way `value` breaks `schema` (empty when valid).

    Raises `jsonschema.SchemaError` when the schema itself is broken.

    >>> schema_errors({"n": "x"}, {"type": "object", "properties": {"n": {"type": "integer"}}})
    ["n: 'x' is not of type 'integer'"]
    """
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = sorted(cls(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in errors]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as {dotted.path: leaf}; lists and scalars are leaves.

    >>> flatten({"a": {"b": 1, "c": [2]}, "d": None})
    {'a.b': 1, 'a.c': [2], 'd': None}
    """
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix or "$": obj}


_MISSING = object()


def values_equal(got: Any, gold: Any, cfg: JsonConfig) -> bool:
    """Equality for JSON leaves: bools are not numbers, numbers may have a tolerance.

    >>> values_equal(1, True, JsonConfig()), values_equal(3, 3.0, JsonConfig())
    (False, True)
    >>> values_equal(" ACME  gmbh", "Acme GmbH", JsonConfig(case_sensitive=False, normalize_space=True))
    True
    """
    if isinstance(gold, bool) or isinstance(got, bool):
        return type(got) is type(gold) and got == gold
    if isinstance(gold, (int, float)) and isinstance(got, (int, float)):
        if not (math.isfinite(got) and math.isfinite(gold)):
            return got == gold
        return math.isclose(got, gold, rel_tol=cfg.rel_tol, abs_tol=cfg.abs_tol) or got == gold
    if isinstance(gold, str) and isinstance(got, str):
        if cfg.normalize_space:
            got, gold = " ".join(got.split()), " ".join(gold.split())
        return got.casefold() == gold.casefold() if not cfg.case_sensitive else got == gold
    if isinstance(gold, list) and isinstance(got, list):
        return len(got) == len(gold) and all(values_equal(a, b, cfg) for a, b in zip(got, gold))
    if isinstance(gold, dict) and isinstance(got, dict):
        return got.keys() == gold.keys() and all(values_equal(got[k], gold[k], cfg) for k in gold)
    return type(got) is type(gold) and got == gold


def field_scores(got: Any, gold: Any, cfg: JsonConfig = JsonConfig()) -> list[FieldScore]:
    """One score per leaf of the gold object."""
    have = flatten(got) if isinstance(got, dict) else {"$": got}
    out = []
    for path, want in flatten(gold).items():
        value = have.get(path, _MISSING)
        if value is _MISSING:
            out.append(FieldScore(path, 0.0, "missing"))
        elif values_equal(value, want, cfg):
            out.append(FieldScore(path, 1.0, ""))
        else:
            out.append(FieldScore(path, 0.0, f"{json.dumps(value)[:40]} != {json.dumps(want)[:40]}"))
    return out


def verify_json(answer: str | None, schema: dict | None = None, gold: Any = None,
                cfg: JsonConfig = JsonConfig()) -> Verdict:
    """Parse, validate against `schema` (if given), compare with `gold` (if given).

    >>> verify_json('{"total": 12, "currency": "EUR"}', gold={"total": 12, "currency": "USD"})
    Verdict(score=0.5, status='wrong', reason='1/2 fields match; currency: "EUR" != "USD"')
    """
    if answer is not None and len(answer) > cfg.max_chars:
        return wrong(f"answer has {len(answer)} characters (limit {cfg.max_chars})")
    value, why = parse_json(answer)
    if why:
        return wrong(why)
    if schema is not None:
        import jsonschema

        try:
            errors = schema_errors(value, schema)
        except jsonschema.SchemaError as e:
            return invalid(f"the JSON Schema itself is not valid: {e.message}")
        if errors:
            more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
            return wrong("schema: " + "; ".join(errors[:3]) + more)
    if gold is None:
        return correct("valid against the schema" if schema is not None else "parses as JSON")
    scores = field_scores(value, gold, cfg)
    score = sum(f.score for f in scores) / len(scores)
    bad = [f for f in scores if f.score < 1.0]
    if not bad:
        return correct(f"all {len(scores)} fields match")
    shown = "; ".join(f"{f.path}: {f.reason}" for f in bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
    return wrong(f"{len(scores) - len(bad)}/{len(scores)} fields match; {shown}", score=score)
