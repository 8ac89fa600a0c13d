"""Each verifier on right, wrong and malformed answers; splits are disjoint."""

import pytest

from ponder.core.config import ConfigError
from ponder.tasks import get_task
from ponder.tasks.arithmetic import Problem, column_steps
from ponder.core.think import format_score
from ponder.tasks.countdown import ExpressionError, evaluate


def test_arithmetic_verifier_right_wrong_malformed():
    t = get_task("arithmetic")
    ex = t.examples("test", 5, seed=1)[0]
    assert t.verify(f"<think>x</think>{ex.answer}", ex).status == "correct"
    assert t.verify(f"<think>x</think>{int(ex.answer) + 1}", ex).status == "wrong"
    for bad in ["", ex.answer, "<think>" + ex.answer, f"<think></think>{ex.answer} {ex.answer}", "<think></think>abc"]:
        v = t.verify(bad, ex)
        assert v.status == "wrong" and v.score == 0.0, bad


def test_column_steps_end_with_the_result():
    for p in [Problem("add", 999, 1), Problem("add", 4821, 3957), Problem("mul", 9999, 9), Problem("mul", 5, 2)]:
        assert column_steps(p)[-1].endswith(f"so {p.result}")


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_splits_are_disjoint_and_deterministic(name):
    t = get_task(name)
    train = {e.id for e in t.examples("train", 300, seed=0)}
    test = {e.id for e in t.examples("test", 100, seed=0)}
    assert not train & test
    assert [e.id for e in t.examples("test", 10, seed=3)] == [e.id for e in t.examples("test", 10, seed=3)]


def test_countdown_verifier():
    t = get_task("countdown")
    ex = t.examples("test", 3, seed=0)[0]
    sol = ex.info["solution"]
    assert t.verify(f"<think></think>{sol}", ex).status == "correct"
    assert t.verify(f"<think></think>{sol}={ex.answer}", ex).status == "correct"
    nums = ex.info["numbers"]
    assert t.verify(f"<think></think>{ex.answer}", ex).status == "wrong"  # target alone uses no numbers
    assert t.verify("<think></think>" + "+".join(map(str, nums)) + "+1", ex).status == "wrong"
    for bad in ["<think></think>__import__('os').system('true')", "<think></think>2**99999999", "<think></think>(((",
                "<think></think>" + "(" * 5000 + "1" + ")" * 5000, ""]:
        assert t.verify(bad, ex).status == "wrong", bad


def test_countdown_evaluate_never_executes_code():
    with pytest.raises(ExpressionError):
        evaluate("open('x','w')")
    with pytest.raises(ExpressionError, match="division by zero"):
        evaluate("1/(2-2)")


def test_format_score():
    assert format_score("<think>a</think>1") == 1.0
    assert format_score("<think>a</think><think>b</think>1") == 0.0
    assert format_score("<think>a</think>   ") == 0.0


def test_unknown_task_and_bad_options_name_the_valid_ones():
    with pytest.raises(ConfigError, match="valid tasks: arithmetic, countdown"):
        get_task("nope")
    with pytest.raises(ConfigError, match="valid ops: add, mul"):
        get_task("arithmetic", ops="add,div")
    with pytest.raises(ConfigError, match="no option"):
        get_task("arithmetic", digits=3)
