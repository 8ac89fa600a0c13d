"""`ponder verify`: one verdict per line, exit code from the worst verdict, clear errors."""

import json

import pytest

from ponder.core.config import ConfigError
from ponder.commands.verify import main
from ponder.tasks.spec import build_task


def lines(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_unknown_kind_lists_valid_kinds(capsys):
    assert main(["frobnicate"]) == 2
    assert "valid kinds: math, json, code, task" in capsys.readouterr().err


def test_math(capsys):
    pytest.importorskip("math_verify")
    assert main(["math", "--gold", r"\frac12", "--answer", "0.5", "--json"]) == 0
    assert json.loads(lines(capsys)[0]) == {"score": 1.0, "status": "correct", "reason": "equivalent"}
    assert main(["math", "--gold", "3", "--answer", "3", "--answer", r"\boxed{1} \boxed{3}"]) == 1
    out = lines(capsys)
    assert out[0].startswith("index=0: correct") and out[1].startswith("index=1: wrong")


def test_math_answers_file_and_options(tmp_path, capsys):
    pytest.importorskip("math_verify")
    f = tmp_path / "a.jsonl"
    f.write_text('"3.001"\n{"answer": "7", "gold": "7"}\n')
    assert main(["math", "--gold", "3", "--answers-file", str(f), "--abs-tol", "0.01", "--json"]) == 0
    assert [json.loads(x)["status"] for x in lines(capsys)] == ["correct", "correct"]
    with pytest.raises(ConfigError, match="MathConfig.timeout_s"):
        main(["math", "--gold", "3", "--answer", "3", "--timeout-s", "-1"])


def test_json(tmp_path, capsys):
    (tmp_path / "s.json").write_text('{"type": "object", "required": ["total"]}')
    (tmp_path / "g.json").write_text('{"total": 3, "cur": "EUR"}')
    args = ["json", "--schema", str(tmp_path / "s.json"), "--gold", str(tmp_path / "g.json")]
    assert main(args + ["--answer", '{"total": 3, "cur": "EUR"}']) == 0
    assert main(args + ["--answer", '{"total": 3, "cur": "USD"}', "--json"]) == 1
    assert json.loads(lines(capsys)[-1])["score"] == 0.5
    with pytest.raises(ConfigError, match="cannot read schema file"):
        main(["json", "--schema", str(tmp_path / "missing.json"), "--answer", "{}"])


def test_task_by_id_and_file(tmp_path, capsys):
    task = build_task("arithmetic")
    ex = task.examples("test", 1)[0]
    assert main(["task", "--task", "arithmetic", "--id", ex.id, "--completion", f"<think></think>{ex.answer}"]) == 0
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"id": ex.id, "completion": "<think>x</think>"}) + "\n")
    assert main(["task", "--task", "arithmetic", "--completions", str(f), "--json"]) == 1
    assert json.loads(lines(capsys)[-1])["id"] == ex.id
    with pytest.raises(ConfigError, match="no example with id"):
        main(["task", "--task", "arithmetic", "--id", "nope", "--completion", "x", "--search", "10"])


def test_task_names():
    with pytest.raises(ConfigError, match="valid tasks"):
        build_task("no-such-task")
    with pytest.raises(ConfigError, match="needs a grader: --grader"):
        build_task("data.jsonl")


def test_verify_batch_keeps_order_and_masks_crashes():
    from ponder.tasks.base import Task
    from ponder.verifiers.batch import verify_batch

    task = build_task("arithmetic")
    exs = task.examples("train", 20)
    comps = [f"<think></think>{e.answer if i % 2 else 0}" for i, e in enumerate(exs)]
    assert [v.ok for v in verify_batch(task, comps, exs)] == [bool(i % 2) for i in range(20)]

    class Crashy(Task):
        def examples(self, split, n, seed=0):
            return exs[:n]

        def verify(self, completion, example):
            raise ZeroDivisionError

    assert {v.status for v in verify_batch(Crashy(), comps[:3], exs[:3])} == {"invalid"}
