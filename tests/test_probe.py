"""`ponder probe`: no built-in verifier can be gamed by a degenerate answer, and sloppy ones are caught."""

import json

import pytest

from ponder.tasks.probe import PROBES, main, probe_task, sanity_check
from ponder.tasks import TASKS, get_task
from ponder.core.think import answer_text
from ponder.tasks.base import Example, Task
from ponder.tasks.jsonl import JsonlTask
from ponder.core.verdict import correct, wrong


def leaks(results):
    return sorted({r.probe for r in results if r.leaked})


@pytest.mark.parametrize("name", list(TASKS))
def test_builtin_tasks_have_no_leaks(name):
    results = probe_task(get_task(name), n=3)
    assert len(results) == 3 * len(PROBES)
    assert leaks(results) == []


@pytest.fixture
def math_jsonl(tmp_path):
    rows = [{"prompt": f"What is {a}*{b}?", "answer": str(a * b), "split": "test"} for a, b in [(6, 7), (12, 12)]]
    rows.append({"prompt": "Simplify 2/4.", "answer": r"\frac{1}{2}", "split": "test"})
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("spec", [
    {"kind": "math"}, {"kind": "string"}, {"kind": "numeric"}, {"kind": "regex", "pattern": "{answer}"},
    {"kind": "combine", "parts": [{"kind": "math", "weight": 0.9}, {"kind": "regex", "pattern": ".+", "weight": 0.1}]},
])
def test_grader_kinds_have_no_leaks(math_jsonl, spec):
    task = JsonlTask(math_jsonl, spec)
    results = probe_task(task, n=3)
    if spec["kind"] == "combine":
        # The format part pays for any non-empty answer: that is what the spec asks for, and the probe says so.
        assert "echo the question" in leaks(results)
        return
    assert leaks(results) == []
    if spec["kind"] in ("math", "string", "regex"):
        assert all(r.verdict.ok for r in sanity_check(task, n=3))


class SloppyTask(Task):
    """The classic mistakes: 'gold in completion' and 'last number wins'."""

    name = "sloppy"

    def __init__(self, mode):
        self.mode = mode

    def examples(self, split, n, seed=0):
        return [Example(id=str(i), prompt=f"{i}+{i}=?", answer=str(2 * i + 500)) for i in range(n)]

    def verify(self, completion, example):
        if self.mode == "substring":
            return correct() if example.answer in completion else wrong("no")
        if self.mode == "last-number":
            words = (answer_text(completion) or "").replace(",", " ").split()
            nums = [w for w in words if w.isdigit()]
            return correct() if nums and nums[-1] == example.answer else wrong("no")
        raise RuntimeError("verifier bug")


def test_sloppy_verifiers_are_caught():
    found = leaks(probe_task(SloppyTask("substring"), n=2))
    assert {"gold only in thinking", "thinking never closed", "candidates, spaces", "gold embedded",
            "huge junk then gold"} <= set(found)
    found = leaks(probe_task(SloppyTask("last-number"), n=2))
    assert "huge junk then gold" in found


def test_a_verifier_that_raises_is_reported_invalid_not_crashing():
    results = probe_task(SloppyTask("raises"), n=1)
    assert all(r.verdict.status == "invalid" for r in results)


def test_cli_exit_codes(tmp_path, math_jsonl, capsys):
    assert main(["arithmetic", "--n", "2"]) == 0
    assert "no probe scored above 0" in capsys.readouterr().out
    rewards = tmp_path / "sloppy.py"
    rewards.write_text("def reward(completion, example):\n    return float(example.answer in completion)\n")
    assert main([str(math_jsonl), "--grader", f"{rewards}:reward", "--n", "1"]) == 1
    out = capsys.readouterr()
    assert "LEAK" in out.out and "gamed" in out.err
