"""Thinking budgets: caps hold, answers are never empty, forcing keeps batched == one-by-one."""

import pytest

from ponder.engine.budget import EFFORT, ThinkingForcer, effort_budget, row_cap
from ponder.core.config import ConfigError
from ponder.engine.engine import Engine, SamplingParams, row_seed
from ponder.core.think import answer_text

PROMPTS = ["12+34=?\n", "5*7=?\n", "98765+12345=?\n"]


def _all(out):
    return [s for g in out for s in g]


def test_budget_zero_gives_no_thinking(tiny):
    model, tok = tiny
    sp = SamplingParams(max_new_tokens=30, thinking_budget=0, answer_reserve=4)
    for s in _all(Engine(model, tok).generate(PROMPTS, n=6, params=sp, seed=2)):
        assert s.thinking_tokens == 0
        assert s.text.startswith("<think></think>")
        assert s.answer_tokens >= 1 and answer_text(s.text)


@pytest.mark.parametrize("budget", [1, 5, 17, -1])
def test_budget_caps_thinking_and_answer_never_empty(tiny, budget):
    model, tok = tiny
    for temperature in (1.0, 0.0):
        sp = SamplingParams(max_new_tokens=40, temperature=temperature, thinking_budget=budget, answer_reserve=3)
        out = Engine(model, tok).generate(PROMPTS, n=5, params=sp, seed=3)
        for s in _all(out):
            assert s.thinking_tokens <= (budget if budget >= 0 else 40 - 3 - 2)
            assert s.answer_tokens >= 1
            assert answer_text(s.text), s.text  # non-empty text after the last </think>


def test_per_prompt_limits_still_leave_room_for_the_answer(tiny):
    model, tok = tiny
    sp = SamplingParams(max_new_tokens=60, thinking_budget=50, answer_reserve=2)
    out = Engine(model, tok).generate(PROMPTS, n=3, params=sp, seed=4, max_tokens=[10, 20, 60])
    for g, lim in zip(out, [10, 20, 60]):
        for s in g:
            assert len(s.ids) <= lim and s.thinking_tokens <= lim - 4 and answer_text(s.text)


def test_forced_budgets_keep_batched_equal_to_one_by_one(tiny):
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=30, thinking_budget=8, min_thinking=6, answer_reserve=3, answer_prefix="A:")
    batched = e.generate(PROMPTS, n=3, params=sp, seed=7)
    for i, p in enumerate(PROMPTS):
        for j in range(3):
            (one,) = e.generate_ids([e.encode(p)], 1, sp, [[row_seed(7, i, j)]], [30])
            assert one.ids == batched[i][j].ids
            assert "</think>A:" in one.text  # the answer prefix follows the forced close


def test_forcer_replaces_early_close_with_wait_and_caps():
    OPEN, CLOSE, EOS, W = 1, 2, 3, 9
    f = ThinkingForcer(OPEN, CLOSE, EOS, cap=4, min_thinking=2, wait_ids=[W, W], prefix_ids=[], opened=False)
    emitted = [f.next(t) for t in [5, CLOSE, 5, 5, 5, 5, 6]]
    # <think>, "Wait" (2 tokens, the second forced), one more thought, then </think> at the cap of 4
    assert emitted == [OPEN, W, W, 5, 5, CLOSE, 6]
    assert f.thought == 4
    assert f.banned() == (OPEN, CLOSE)  # answer started: only a second thinking block is refused


def test_forcer_turns_eos_while_thinking_into_close_and_bans_empty_answer():
    OPEN, CLOSE, EOS = 1, 2, 3
    f = ThinkingForcer(OPEN, CLOSE, EOS, cap=10, min_thinking=0, wait_ids=[9], prefix_ids=[7], opened=True)
    assert [f.next(5), f.next(EOS), f.next(4)] == [5, CLOSE, 7]
    assert EOS in f.banned()  # only the forced prefix so far
    f.next(8)
    assert EOS not in f.banned()


def test_row_cap_reserves_answer_room():
    assert row_cap(0, 40, 4, 0, False) == 0
    assert row_cap(-1, 40, 4, 0, False) == 34
    assert row_cap(30, 20, 4, 2, False) == 12


@pytest.mark.parametrize("kwargs", [dict(thinking_budget=-2), dict(thinking_budget=200),
                                    dict(thinking_budget=5, min_thinking=6), dict(thinking_budget=5, answer_reserve=0)])
def test_bad_budget_is_a_clear_error(kwargs):
    with pytest.raises(ConfigError, match="valid"):
        SamplingParams(max_new_tokens=64, **kwargs)


def test_unknown_effort_lists_levels():
    assert effort_budget("low") == EFFORT["low"]
    with pytest.raises(ConfigError, match="low.*medium.*high"):
        effort_budget("max")
