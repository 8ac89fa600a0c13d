"""Strategies: voting rules by hand, adaptive consistency live == on a pool, allocation, PRM search."""

import random

import pytest

from ponder.engine.engine import Engine, SamplingParams
from ponder.inference.strategies import (adaptive_consistency, adaptive_stop, allocate, beta_confidence, best_of_n,
                               extract, step_search, vote_confidence)

PROMPTS = ["12+34=?\n", "5*7=?\n", "98765+12345=?\n"]


def test_beta_confidence_matches_numerical_integral():
    for a, b in [(1, 0), (3, 1), (5, 2), (0, 0), (2, 6)]:
        # P(X > 1/2), X ~ Beta(a+1, b+1), by the midpoint rule on the unnormalised density
        f = lambda x: x ** a * (1 - x) ** b
        xs = [(i + 0.5) / 20000 for i in range(20000)]
        total = sum(map(f, xs))
        upper = sum(f(x) for x in xs if x > 0.5)
        assert beta_confidence(a, b) == pytest.approx(upper / total, abs=1e-4)


def test_vote_confidence_ignores_missing_answers():
    assert vote_confidence([None, "", None]) == 0.0
    assert vote_confidence(["3", None, "3"]) == beta_confidence(2, 0)


def test_adaptive_stop_stops_early_on_agreement_and_never_overruns():
    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice("aab") for _ in range(rng.randint(1, 16))]
        k = adaptive_stop(answers, batch=rng.randint(1, 3), threshold=0.9, first=2)
        assert 1 <= k <= len(answers)
        assert k == len(answers) or vote_confidence(answers[:k]) >= 0.9
    assert adaptive_stop(["7"] * 16, batch=1, threshold=0.95, first=2) == 4  # 1 - 0.5**5 >= 0.95


def test_best_of_n_skips_missing_answers():
    assert best_of_n([None, "2", "3"], [5.0, 0.1, 0.2]) == "3"
    assert best_of_n([None], [1.0]) is None


def test_allocate_spends_the_budget_where_votes_disagree():
    probes = [["1", "1"], ["1", "2"], [None, None], ["4", "4"]]
    out = allocate(probes, extra=7, cap=4)
    assert out[0] == out[3] == 0
    assert sum(out) == 7 and max(out) <= 4 and out[2] >= out[1]
    assert allocate(probes, extra=100, cap=3) == [0, 3, 3, 0]  # capped; the rest cannot be placed


def test_adaptive_consistency_live_equals_the_pool_prefix(tiny):
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=12, temperature=1.0)
    pool = e.generate(PROMPTS, n=6, params=sp, seed=9)
    live = adaptive_consistency(e, PROMPTS, sp, seed=9, batch=2, threshold=0.6, max_samples=6, first=2)
    for group, out in zip(pool, live):
        k = adaptive_stop([extract(s) for s in group], 2, 0.6, first=2)
        assert out.samples == k
        assert out.tokens == sum(len(s.ids) for s in group[:k])


class LengthPRM:
    """A stand-in PRM: prefers shorter prefixes (deterministic, no training)."""

    def score(self, prompts, completions):
        return [1.0 / (1 + len(c)) for c in completions]


@pytest.mark.parametrize("diverse", [False, True])
def test_step_search_returns_one_outcome_per_problem_and_is_deterministic(tiny, diverse):
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=16, temperature=1.0)
    a = step_search(e, LengthPRM(), PROMPTS, n=4, width=2, params=sp, seed=1, diverse=diverse, max_steps=4)
    b = step_search(e, LengthPRM(), PROMPTS, n=4, width=2, params=sp, seed=1, diverse=diverse, max_steps=4)
    assert a == b and len(a) == len(PROMPTS)
    for o in a:
        assert o.tokens > 0 and o.samples >= 1


def test_step_search_refuses_bad_shapes(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="multiple of width"):
        step_search(Engine(model, tok), LengthPRM(), PROMPTS, n=5, width=2, params=SamplingParams(8), seed=0)
