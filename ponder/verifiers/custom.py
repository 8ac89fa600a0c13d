"""Your own verifier: a Python function, or a declarative grader spec in TOML.

(a) A function `reward(completion, example) -> float | Verdict`, named
    `module:function` or `path/to/file.py:function`. A float is checked before
    it becomes a reward: NaN, infinities and values outside [0, 1] are
    `invalid` (with the value in the reason), never clipped into a reward, and
    an exception in the function is `invalid` too.

(b) A grader spec, so a task can be a JSONL file plus a few lines of TOML:

        [grader]
        kind = "combine"
        [[grader.parts]]
        kind = "math"
        weight = 0.8
        [[grader.parts]]
        kind = "regex"
        pattern = '^\\\\boxed\\{.*\\}$'
        weight = 0.2

    Kinds: string, regex, numeric, math, json_schema, code_tests, python and
    combine (a weighted mean of its parts). Each kind is a frozen dataclass
    whose fields are the keys it accepts; an unknown key or kind fails naming
    the valid ones. Every grader except `python` looks only at the answer
    (the text after the last `</think>`); an unclosed thinking block is wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Protocol

from ponder.core.config import ConfigError, build, check_choices, load_toml, option
from ponder.core.think import answer_text
from ponder.core.example import Example
from ponder.core.verdict import Verdict, correct, invalid, wrong
from ponder.verifiers.sandbox import BACKENDS as SANDBOXES

# ------------------------------------------------------------ (a) user functions


def load_function(spec: str, base_dir: Path | None = None) -> Callable:
    """Import `module:function` or `path/to/file.py:function` (relative to `base_dir`)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(f"reward function {spec!r} must look like 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(f"reward function file {str(path)!r} (from {spec!r}) does not exist")
        mod_name = f"ponder_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"cannot import module {target!r} for reward function {spec!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ConfigError(f"{target!r} has no function {name!r}; callables there: {', '.join(public[:20])}")
    return fn


def as_verdict(result: Any) -> Verdict:
    """A reward function's return value as a Verdict, refusing values that are not rewards.

    >>> as_verdict(1.0).status, as_verdict(0.25), as_verdict(float("nan")).status
    ('correct', Verdict(score=0.25, status='wrong', reason='partial credit 0.25'), 'invalid')
    >>> as_verdict(1.5).reason
    'reward function returned 1.5, outside [0, 1]'
    """
    if isinstance(result, Verdict):
        return result
    if isinstance(result, bool):
        return correct("reward function returned True") if result else wrong("reward function returned False")
    if not isinstance(result, (int, float)):
        return invalid(f"reward function returned {type(result).__name__} {str(result)[:40]!r}, "
                       "expected a float in [0, 1] or a Verdict")
    score = float(result)
    if math.isnan(score):
        return invalid("reward function returned NaN")
    if not 0.0 <= score <= 1.0:
        return invalid(f"reward function returned {result!r}, outside [0, 1]")
    if score == 1.0:
        return correct("reward function returned 1.0")
    return wrong("reward function returned 0.0" if score == 0.0 else f"partial credit {score:g}", score=score)


# ------------------------------------------------------------ (b) grader kinds


class Grader(Protocol):
    def grade(self, completion: str, example: Example) -> Verdict: ...


def grade(grader: Grader, completion: str, example: Example) -> Verdict:
    """Run a grader; an exception inside it is the grader's failure (`invalid`), not a 0."""
    try:
        return grader.grade(completion, example)
    except Exception as e:  # a crashing checker must be masked out of training, not scored
        return invalid(f"grader {type(grader).__name__} raised {type(e).__name__}: {str(e)[:200]}")


def _answer(completion: str) -> tuple[str | None, Verdict | None]:
    ans = answer_text(completion)
    if ans is None:
        return None, wrong("no answer: the thinking was never closed")
    if not ans:
        return None, wrong("empty answer")
    return ans, None


STRING_MODES = ("exact", "strip", "case-insensitive")


def _squash(s: str) -> str:
    return " ".join(s.split())


@dataclass(frozen=True)
class StringGrader:
    mode: str = option("strip", "exact: answer equals the gold as written; strip: equal after trimming and "
                       "collapsing whitespace; case-insensitive: strip, then casefold", choices=STRING_MODES)

    def __post_init__(self):
        check_choices(self)

    def grade(self, completion: str, example: Example) -> Verdict:
        ans, bad = _answer(completion)
        if bad:
            return bad
        gold = example.answer
        if not gold.strip():
            return invalid("empty gold answer")
        if self.mode != "exact":
            ans, gold = _squash(ans), _squash(gold)
        if self.mode == "case-insensitive":
            ans, gold = ans.casefold(), gold.casefold()
        return correct() if ans == gold else wrong(f"{ans[:40]!r} != {gold[:40]!r}")


@dataclass(frozen=True)
class RegexGrader:
    pattern: str = option("", "the answer must match all of it; '{answer}' stands for the escaped gold")
    ignore_case: bool = option(False, "match case-insensitively")

    def __post_init__(self):
        if not self.pattern:
            raise ConfigError("regex grader needs a non-empty `pattern`")
        try:
            re.compile(self.pattern.replace("{answer}", "x"))
        except re.error as e:
            raise ConfigError(f"regex grader pattern {self.pattern!r} does not compile: {e}") from None

    def grade(self, completion: str, example: Example) -> Verdict:
        ans, bad = _answer(completion)
        if bad:
            return bad
        pattern = self.pattern.replace("{answer}", re.escape(example.answer.strip()))
        # fullmatch, not search: a search would reward an answer that lists every candidate.
        if re.fullmatch(pattern, ans, re.IGNORECASE if self.ignore_case else 0):
            return correct(f"matches /{self.pattern}/")
        return wrong(f"{ans[:40]!r} does not match /{self.pattern}/")


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    """The number a short answer states, or None (a list, words, or nothing).

    >>> parse_number(" $1,234.5$. "), parse_number("1 2"), parse_number("3/4"), parse_number("about 3")
    (1234.5, None, 0.75, None)
    """
    t = text.strip().rstrip(".").strip().strip("$").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    if _NUMBER.fullmatch(t):
        return float(t)
    m = re.fullmatch(r"([-+]?\d+)\s*/\s*(\d+)", t)
    if m and int(m.group(2)) != 0:
        return int(m.group(1)) / int(m.group(2))
    return None


@dataclass(frozen=True)
class NumericGrader:
    rel_tol: float = option(0.0, "relative tolerance")
    abs_tol: float = option(0.0, "absolute tolerance")

    def __post_init__(self):
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ConfigError(f"numeric grader tolerances must be >= 0, got {self.rel_tol}, {self.abs_tol}")

    def grade(self, completion: str, example: Example) -> Verdict:
        ans, bad = _answer(completion)
        if bad:
            return bad
        gold = parse_number(example.answer)
        if gold is None:
            return invalid(f"gold {example.answer[:40]!r} is not a number")
        got = parse_number(ans)
        if got is None:
            return wrong(f"{ans[:40]!r} is not a single number")
        if not math.isfinite(got):
            return wrong(f"{ans[:40]!r} is not finite")
        if got == gold or math.isclose(got, gold, rel_tol=self.rel_tol, abs_tol=self.abs_tol):
            return correct(f"{got:g} ~ {gold:g}")
        return wrong(f"{got:g} != {gold:g}")


@dataclass(frozen=True)
class MathGrader:
    timeout_s: float = option(5.0, "wall-clock limit per check (the checker process is killed past it -> invalid)")
    rel_tol: float = option(0.0, "numeric relative tolerance")
    abs_tol: float = option(0.0, "numeric absolute tolerance")
    last_number: bool = option(False, "fall back to the last number when there is no \\boxed{} or 'answer:'")

    def grade(self, completion: str, example: Example) -> Verdict:
        from ponder.verifiers.math import MathConfig, verify_math

        cfg = MathConfig(timeout_s=self.timeout_s, rel_tol=self.rel_tol, abs_tol=self.abs_tol,
                         last_number=self.last_number)
        return verify_math(answer_text(completion), example.answer, cfg)


@dataclass(frozen=True)
class JsonSchemaGrader:
    schema: dict | None = option(None, "JSON Schema (inline table), or give schema_file")
    schema_file: str = option("", "path of a JSON Schema file, relative to the spec file")
    compare_gold: bool = option(True, "also compare field by field with the gold (the example's answer, as JSON)")
    rel_tol: float = option(0.0, "numeric relative tolerance per field")
    abs_tol: float = option(0.0, "numeric absolute tolerance per field")
    case_sensitive: bool = option(True, "compare string fields case-sensitively")
    normalize_space: bool = option(False, "compare string fields after trimming and collapsing whitespace")

    def grade(self, completion: str, example: Example) -> Verdict:
        from ponder.verifiers.structured import JsonConfig, verify_json

        gold = None
        if self.compare_gold:
            try:
                gold = json.loads(example.answer)
            except json.JSONDecodeError as e:
                return invalid(f"gold answer of {example.id!r} is not JSON: {e.msg}")
        cfg = JsonConfig(rel_tol=self.rel_tol, abs_tol=self.abs_tol, case_sensitive=self.case_sensitive,
                         normalize_space=self.normalize_space)
        return verify_json(answer_text(completion), self.schema, gold, cfg)


_FENCED_CODE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.S)


def code_of(answer: str) -> str:
    """The program in an answer: its last fenced code block, else all of it.

    >>> code_of("Here:\\n```python\\nx = 1\\n```")
    'x = 1\\n'
    """
    blocks = _FENCED_CODE.findall(answer)
    return blocks[-1] if blocks else answer


@dataclass(frozen=True)
class CodeTestsGrader:
    tests: str = option("", "Python tests (HumanEval style, `check(candidate)`); empty: the example's info['tests']")
    tests_file: str = option("", "path of a tests file, relative to the spec file")
    entry_point: str = option("", "function passed to check(); empty: the example's info['entry_point'] or inferred")
    wall_seconds: float = option(20.0, "wall-clock limit for one run")
    cpu_seconds: float = option(10.0, "CPU-time limit per process")
    memory_mb: int = option(1024, "address-space limit per process")
    sandbox: str = option("auto", "auto: bubblewrap, refused without it; unsafe-subprocess: run unsandboxed "
                          "anyway (warns)", choices=SANDBOXES)

    def __post_init__(self):
        check_choices(self)

    def grade(self, completion: str, example: Example) -> Verdict:
        from ponder.verifiers.sandbox import Limits
        from ponder.verifiers.code import verify_code

        ans, bad = _answer(completion)
        if bad:
            return bad
        tests = self.tests or example.info.get("tests", "")
        if not tests:
            return invalid(f"example {example.id!r} has no tests (set `tests`/`tests_file` or info['tests'])")
        entry = self.entry_point or example.info.get("entry_point") or None
        limits = Limits(cpu_seconds=self.cpu_seconds, wall_seconds=self.wall_seconds, memory_mb=self.memory_mb)
        return verify_code(code_of(ans), tests, limits, entry_point=entry, backend=self.sandbox)


@dataclass(frozen=True)
class PythonGrader:
    function: str = option("", "reward function as 'module:function' or 'file.py:function'")
    fn: Callable | None = field(default=None, repr=False, compare=False, metadata={"help": "loaded function"})

    def grade(self, completion: str, example: Example) -> Verdict:
        fn = self.fn or load_function(self.function)
        try:
            result = fn(completion, example)
        except Exception as e:  # the user's function failed: mask it, never score it 0
            return invalid(f"reward function {self.function} raised {type(e).__name__}: {str(e)[:200]}")
        return as_verdict(result)


@dataclass(frozen=True)
class CombineGrader:
    parts: tuple = ()  # ((weight, grader), ...); weights are normalised to sum to 1

    def __post_init__(self):
        if not self.parts:
            raise ConfigError("combine grader needs at least one part in `parts`")
        for w, _ in self.parts:
            if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0):
                raise ConfigError(f"combine part weight {w!r} must be a finite number >= 0")
        if sum(w for w, _ in self.parts) <= 0:
            raise ConfigError("combine grader weights sum to 0")

    def grade(self, completion: str, example: Example) -> Verdict:
        total = sum(w for w, _ in self.parts)
        verdicts = [(w, grade(g, completion, example)) for w, g in self.parts]
        broken = [v for _, v in verdicts if v.status == "invalid"]
        if broken:  # one part could not be judged, so the sum cannot be either
            return invalid(f"a part could not be graded: {broken[0].reason}")
        score = min(1.0, sum(w * v.score for w, v in verdicts) / total)
        reason = "; ".join(f"{w / total:.2g}*{v.score:.2g} ({v.reason[:60]})" for w, v in verdicts)
        if all(v.status == "correct" for _, v in verdicts):
            return correct(reason, score=score)
        return wrong(reason, score=score)


KINDS: dict[str, type] = {
    "string": StringGrader,
    "regex": RegexGrader,
    "numeric": NumericGrader,
    "math": MathGrader,
    "json_schema": JsonSchemaGrader,
    "code_tests": CodeTestsGrader,
    "python": PythonGrader,
    "combine": CombineGrader,
}


def parse_grader(spec: dict, base_dir: Path = Path(".")) -> Grader:
    """A grader from its spec (a TOML table as a dict); files in it are relative to `base_dir`."""
    if not isinstance(spec, dict):
        raise ConfigError(f"a grader spec must be a table, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in KINDS:
        raise ConfigError(f"unknown grader kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if "weight" in spec:
        raise ConfigError(f"`weight` belongs to a part of a combine grader, not to a {kind!r} grader")
    if kind == "combine":
        parts = spec.pop("parts", None)
        if spec:
            raise ConfigError(f"unknown combine key(s): {', '.join(spec)}; valid keys: parts")
        if not isinstance(parts, list) or not parts:
            raise ConfigError("combine grader needs `parts`, a non-empty list of grader tables")
        out = []
        for p in parts:
            p = dict(p) if isinstance(p, dict) else p
            weight = p.pop("weight", 1.0) if isinstance(p, dict) else 1.0
            out.append((weight, parse_grader(p, base_dir)))
        return CombineGrader(tuple(out))
    if kind == "json_schema" and spec.get("schema_file"):
        spec["schema"] = _read_json(base_dir / spec["schema_file"])
    if kind == "code_tests" and spec.get("tests_file"):
        spec["tests"] = _read_text(base_dir / spec["tests_file"])
    if kind == "python":
        spec.pop("fn", None)
        g = build(PythonGrader, spec)
        return PythonGrader(g.function, load_function(g.function, base_dir))
    if kind == "json_schema" and not spec.get("schema") and not spec.get("compare_gold", True):
        raise ConfigError("json_schema grader with compare_gold = false needs `schema` or `schema_file`")
    return build(KINDS[kind], spec)


def load_grader(path: str | Path) -> Grader:
    """A grader from a TOML file: its `[grader]` table, or the whole file."""
    p = Path(path)
    data = load_toml(p)
    return parse_grader(data.get("grader", data), p.parent)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {e}") from None


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"grader file {str(path)!r} does not exist")
    return path.read_text(encoding="utf-8")


def grader_keys(kind: str) -> list[str]:
    """The keys a grader kind accepts (for error messages and docs)."""
    return [f.name for f in fields(KINDS[kind]) if f.name != "fn"]
