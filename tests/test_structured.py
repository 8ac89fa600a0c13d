"""Structured output: JSON parsing, schema validation, per-field scores."""

import json

import pytest

pytest.importorskip("jsonschema", reason="jsonschema is not installed")

from ponder.verifiers.structured import JsonConfig, field_scores, parse_json, verify_json  # noqa: E402

INVOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "number": {"type": "string"},
        "total": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD"]},
        "customer": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
    "required": ["number", "total", "currency"],
    "additionalProperties": False,
}
GOLD = {"number": "INV-7", "total": 120.5, "currency": "EUR", "customer": {"name": "Ada"}}


def test_parse_plain_and_fenced():
    assert parse_json('{"a": 1}') == ({"a": 1}, None)
    assert parse_json('Sure.\n```json\n{"a": 1}\n```\n') == ({"a": 1}, None)
    assert parse_json('```\n[1]\n```') == ([1], None)
    assert parse_json('```json\n{"a": 1}\n```\n```json\n{"a": 2}\n```')[1] == "2 different fenced JSON blocks"


@pytest.mark.parametrize("answer", [None, "", "   ", "{", "the total is 120.5", "[" * 100_000 + "]" * 100_000])
def test_unparseable_is_wrong(answer):
    v = verify_json(answer, INVOICE_SCHEMA, GOLD)
    assert v.status == "wrong" and v.score == 0.0, v


def test_exact_match_is_correct():
    v = verify_json(json.dumps(GOLD), INVOICE_SCHEMA, GOLD)
    assert v.ok and v.score == 1.0, v


def test_schema_violation_is_wrong_with_reason():
    v = verify_json('{"number": "INV-7", "total": -1, "currency": "GBP"}', INVOICE_SCHEMA)
    assert v.status == "wrong" and v.score == 0.0
    assert "total" in v.reason and "currency" in v.reason
    v = verify_json('{"number": "INV-7", "total": 1, "currency": "EUR", "bonus": 1}', INVOICE_SCHEMA)
    assert "bonus" in v.reason


def test_schema_only_check():
    assert verify_json('{"number": "A", "total": 3, "currency": "USD"}', INVOICE_SCHEMA).ok


def test_broken_schema_is_invalid():
    v = verify_json('{"a": 1}', {"type": "no-such-type"})
    assert v.status == "invalid", v


def test_per_field_partial_credit_names_the_mismatches():
    answer = dict(GOLD, currency="USD", customer={"name": "Bob"})
    v = verify_json(json.dumps(answer), INVOICE_SCHEMA, GOLD)
    assert v.status == "wrong" and v.score == pytest.approx(0.5)
    assert "currency" in v.reason and "customer.name" in v.reason and "total" not in v.reason


def test_missing_field_scores_zero():
    scores = {f.path: f for f in field_scores({"number": "INV-7"}, GOLD)}
    assert scores["number"].score == 1.0
    assert scores["total"].reason == "missing"


def test_types_are_strict_and_tolerance_optional():
    assert field_scores({"x": True}, {"x": 1})[0].score == 0.0
    assert field_scores({"x": "1"}, {"x": 1})[0].score == 0.0
    assert field_scores({"x": 2}, {"x": 2.0})[0].score == 1.0
    assert field_scores({"x": 100.4}, {"x": 100})[0].score == 0.0
    assert field_scores({"x": 100.4}, {"x": 100}, JsonConfig(abs_tol=0.5))[0].score == 1.0
    assert field_scores({"x": "ada"}, {"x": "Ada"}, JsonConfig(case_sensitive=False))[0].score == 1.0


def test_degenerate_answers_score_zero():
    for answer in ["{}", "[]", "null", '""', json.dumps([GOLD, GOLD])]:
        v = verify_json(answer, gold=GOLD)
        assert v.score == 0.0, (answer, v)
