"""Your own verifier: reward functions, grader specs in TOML, and JSONL tasks."""

import json
import textwrap

import pytest

from ponder.core.config import ConfigError
from ponder.tasks.base import Example
from ponder.tasks.jsonl import JsonlTask
from ponder.verifiers.custom import (
    CombineGrader, NumericGrader, RegexGrader, StringGrader, as_verdict, grade, load_function, load_grader,
    parse_grader,
)

EX = Example(id="e1", prompt="What is 6*7?", answer="42")


def done(answer: str) -> str:
    return f"<think>thinking</think>{answer}"


REWARDS = '''
from ponder.core.verdict import wrong

def exact(completion, example):
    return float(completion.endswith(example.answer))

def too_big(completion, example):
    return 1.5

def nan(completion, example):
    return float("nan")

def crashes(completion, example):
    raise KeyError("boom")

def text(completion, example):
    return "yes"

def verdict(completion, example):
    return wrong("custom reason", score=0.25)
'''


@pytest.fixture
def rewards(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    return path


# ------------------------------------------------------------- reward functions

def test_function_from_file(rewards):
    fn = load_function(f"{rewards}:exact")
    assert fn(done("42"), EX) == 1.0


def test_function_from_module():
    assert load_function("ponder.tasks.base:split_of")("x") in ("train", "test")


@pytest.mark.parametrize("spec,needle", [
    ("nocolon", "module:function"),
    ("no.such.module:f", "cannot import"),
    ("ponder.tasks.base:nope", "no function 'nope'"),
    ("missing_file.py:f", "does not exist"),
])
def test_bad_function_names_fail_clearly(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        load_function(spec)


@pytest.mark.parametrize("name,status,score", [
    ("exact", "correct", 1.0), ("too_big", "invalid", 0.0), ("nan", "invalid", 0.0),
    ("crashes", "invalid", 0.0), ("text", "invalid", 0.0), ("verdict", "wrong", 0.25),
])
def test_function_results_are_validated(rewards, name, status, score):
    g = parse_grader({"kind": "python", "function": f"{rewards}:{name}"})
    v = grade(g, done("42"), EX)
    assert (v.status, v.score) == (status, score), v


def test_as_verdict_rejects_out_of_range():
    for bad in (-0.1, 1.0001, float("inf"), float("-inf"), float("nan"), None, "1"):
        assert as_verdict(bad).status == "invalid", bad
    assert as_verdict(0.5).score == 0.5 and as_verdict(True).ok


# ------------------------------------------------------------- grader kinds

@pytest.mark.parametrize("mode,answer,ok", [
    ("exact", "42", True), ("exact", " 42 ", True), ("strip", "  42\n", True),
    ("case-insensitive", "HELLO  world", True), ("strip", "HELLO world", False), ("exact", "42.0", False),
])
def test_string_modes(mode, answer, ok):
    gold = "hello world" if "world" in answer.lower() else "42"
    v = StringGrader(mode).grade(done(answer), Example("s", "p", gold))
    assert v.ok == ok, v


def test_string_refuses_bad_mode():
    with pytest.raises(ConfigError, match="case-insensitive"):
        StringGrader("fuzzy")


def test_regex_is_a_full_match_not_a_search():
    g = RegexGrader(r"\\boxed\{{answer}\}")
    assert g.grade(done(r"\boxed{42}"), EX).ok
    assert not g.grade(done(r"\boxed{41} \boxed{42}"), EX).ok
    assert not g.grade(done(r"I think \boxed{42} or 43"), EX).ok


def test_regex_pattern_must_compile():
    with pytest.raises(ConfigError, match="does not compile"):
        RegexGrader("(")


@pytest.mark.parametrize("answer,ok", [("42", True), ("42.0", True), ("$42$.", True), ("4.2e1", True),
                                       ("41", False), ("42 43", False), ("about 42", False), ("", False)])
def test_numeric(answer, ok):
    assert NumericGrader().grade(done(answer), EX).ok == ok


def test_numeric_tolerance():
    assert NumericGrader(abs_tol=0.5).grade(done("42.4"), EX).ok
    assert not NumericGrader(rel_tol=1e-3).grade(done("42.1"), EX).ok


def test_unclosed_thinking_is_wrong_for_every_kind():
    for g in (StringGrader(), RegexGrader(".*"), NumericGrader()):
        assert grade(g, "<think>42", EX).status == "wrong"


def test_combine_is_a_weighted_mean():
    g = CombineGrader(((3.0, NumericGrader()), (1.0, RegexGrader(r"\d+\.\d+"))))
    v = g.grade(done("42"), EX)
    assert v.status == "wrong" and v.score == pytest.approx(0.75)
    assert g.grade(done("42.0"), EX).ok


def test_combine_with_an_invalid_part_is_invalid(rewards):
    g = parse_grader({"kind": "combine", "parts": [
        {"kind": "numeric", "weight": 1}, {"kind": "python", "function": f"{rewards}:crashes", "weight": 1}]})
    assert g.grade(done("42"), EX).status == "invalid"


# ------------------------------------------------------------- specs in TOML

SPEC = '''
[grader]
kind = "combine"

[[grader.parts]]
kind = "numeric"
abs_tol = 0.01
weight = 0.7

[[grader.parts]]
kind = "regex"
pattern = '\\d+'
weight = 0.3
'''


def test_toml_spec(tmp_path):
    path = tmp_path / "grader.toml"
    path.write_text(SPEC)
    g = load_grader(path)
    assert g.grade(done("42"), EX).ok
    assert g.grade(done("42.001"), EX).score == pytest.approx(0.7)


@pytest.mark.parametrize("spec,needle", [
    ({"kind": "fuzzy"}, "valid kinds: string, regex, numeric, math, json_schema, code_tests, python, combine"),
    ({"kind": "numeric", "tolerance": 1}, "valid keys: rel_tol, abs_tol"),
    ({"kind": "numeric", "weight": 2}, "belongs to a part of a combine"),
    ({"kind": "combine", "parts": []}, "non-empty list"),
    ({"kind": "combine", "parts": [{"kind": "numeric", "weight": -1}]}, "weight"),
    ({"kind": "string", "mode": "fuzzy"}, "choose one of"),
    ({"kind": "json_schema", "schema_file": "nope.json"}, "does not exist"),
])
def test_bad_specs_fail_naming_valid_choices(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_grader(spec)


def test_json_schema_kind(tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(
        {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}))
    g = parse_grader({"kind": "json_schema", "schema_file": "schema.json"}, tmp_path)
    ex = Example("j", "p", json.dumps({"total": 12, "cur": "EUR"}))
    assert g.grade(done('{"total": 12, "cur": "EUR"}'), ex).ok
    assert g.grade(done('{"total": 12, "cur": "USD"}'), ex).score == 0.5
    assert g.grade(done('{"cur": "EUR"}'), ex).status == "wrong"


def test_math_kind():
    g = parse_grader({"kind": "math"})
    assert g.grade(done(r"\boxed{42}"), EX).ok
    assert not g.grade(done(r"\boxed{41} \boxed{42}"), EX).ok


def test_code_tests_kind():
    pytest.importorskip("ponder.verifiers.code")
    g = parse_grader({"kind": "code_tests", "tests": "def check(f):\n    assert f(2, 3) == 5\n",
                      "entry_point": "add", "wall_seconds": 10})
    good = done("```python\ndef add(a, b):\n    return a + b\n```")
    assert g.grade(good, EX).ok
    assert g.grade(done("```python\nimport sys\nsys.exit(0)\n```"), EX).status == "wrong"


# ------------------------------------------------------------- JSONL tasks

def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_jsonl_task(tmp_path):
    rows = [{"prompt": f"{i}+{i}=?", "answer": str(2 * i)} for i in range(40)]
    rows.append({"prompt": "pinned", "answer": "1", "split": "test", "id": "pin", "difficulty": 3, "note": "x"})
    write_jsonl(tmp_path / "t.jsonl", rows)
    task = JsonlTask(tmp_path / "t.jsonl", {"kind": "numeric"})
    train, test = task.examples("train", 100), task.examples("test", 100)
    assert len(train) + len(test) == 41 and test
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    pin = next(e for e in test if e.id == "pin")
    assert pin.difficulty == 3 and pin.info == {"note": "x"}
    assert task.examples("train", 5, seed=1) == task.examples("train", 5, seed=1)
    ex = train[0]
    assert task.verify(done(ex.answer), ex).ok
    assert task.verify(done(""), ex).status == "wrong"


def test_jsonl_task_with_a_toml_grader_and_json_answers(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "invoice", "answer": {"total": 3}, "split": "train"}])
    (tmp_path / "g.toml").write_text('[grader]\nkind = "json_schema"\n')
    task = JsonlTask(tmp_path / "t.jsonl", str(tmp_path / "g.toml"))
    ex = task.examples("train", 1)[0]
    assert task.verify(done('{"total": 3}'), ex).ok


@pytest.mark.parametrize("bad,needle", [
    ('{"prompt": "a", "answer": "1"', "t.jsonl:2: not valid JSON"),
    ('["a", "1"]', "t.jsonl:2: expected a JSON object"),
    ('{"prompt": "a"}', "t.jsonl:2: missing field(s) answer"),
    ('{"prompt": "b", "answer": "1", "id": "line1"}', "t.jsonl:2: id 'line1' already used"),
    ('{"prompt": "b", "answer": "1", "split": "dev"}', "t.jsonl:2: split 'dev'"),
])
def test_malformed_lines_name_file_and_line(tmp_path, bad, needle):
    write_jsonl(tmp_path / "t.jsonl", ['{"prompt": "ok", "answer": "1"}', bad])
    with pytest.raises(ConfigError) as err:
        JsonlTask(tmp_path / "t.jsonl", {"kind": "numeric"})
    assert needle in str(err.value)


def test_jsonl_task_with_a_reward_function(tmp_path, rewards):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "q", "answer": "42", "split": "train"}])
    task = JsonlTask(tmp_path / "t.jsonl", f"{rewards}:exact")
    ex = task.examples("train", 1)[0]
    assert task.verify(done("42"), ex).ok and not task.verify(done("41"), ex).ok


def test_recipe_style_spec_roundtrip(tmp_path):
    spec = textwrap.dedent('''
        kind = "string"
        mode = "case-insensitive"
    ''')
    (tmp_path / "g.toml").write_text(spec)
    assert load_grader(tmp_path / "g.toml").grade(done("ABC"), Example("x", "p", "abc")).ok
