"""Strategies: voting rules by hand, adaptive consistency live == on a pool, allocation, PRM search."""

import random

import pytest

from ponder.core.stats import majority_vote
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


@pytest.fixture(scope="module")
def base_engine():
    """The built-in base: it answers arithmetic (a random model never does, so its votes never agree)."""
    from ponder.models.model import load_model
    model, tok = load_model("tiny")
    return Engine(model, tok)


def test_adaptive_consistency_stops_early_and_live_equals_the_pool_prefix(base_engine):
    from ponder.tasks import get_task
    prompts = [ex.prompt for ex in get_task("arithmetic", max_digits=2).examples("test", 6, seed=0)]
    sp = SamplingParams(max_new_tokens=24, temperature=1.0)
    pool = base_engine.generate(prompts, n=8, params=sp, seed=9)
    live = adaptive_consistency(base_engine, prompts, sp, seed=9, batch=1, threshold=0.95, max_samples=8, first=2)
    for group, out in zip(pool, live):
        answers = [extract(s) for s in group]
        k = adaptive_stop(answers, 1, 0.95, first=2)
        assert out.samples == k
        assert out.tokens == sum(len(s.ids) for s in group[:k])
        assert out.answer == majority_vote(answers[:k])
    # the case the rule exists for: problems whose samples agree stop before the cap, and say so
    early = [o.samples for o in live if o.samples < 8]
    assert early and all(vote_confidence([extract(s) for s in g[:o.samples]]) >= 0.95
                         for g, o in zip(pool, live) if o.samples < 8), [o.samples for o in live]


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


class ScriptedEngine:
    """A stand-in engine with a known tree: the first step's lines are a, b, d, c (in the order the
    children are requested: `c` comes last in its DVTS subtree too), then x or y, then `</think>` and the answer 1, 2, 3 or 4 named by the first
    line. So which answer comes out depends only on which chains the search keeps and how it votes."""

    def __init__(self, tok):
        self.tok, self.eos_id = tok, tok.eos_token_id

    def encode(self, prompt):
        return self.tok(prompt)["input_ids"]

    def generate_ids(self, prompt_ids, n, params, seeds, limits):
        from types import SimpleNamespace
        out = []
        for k, ids in enumerate(prompt_ids):
            lines = self.tok.decode(ids, skip_special_tokens=True).split("?\n", 1)[1].splitlines()
            for j in range(n):
                if not lines:
                    text, finish = "abdc"[(k * n + j) % 4] + "\n", "stop"
                elif len(lines) == 1:
                    text, finish = "xy"[j % 2] + "\n", "stop"
                else:
                    text, finish = "</think>" + str("abcd".index(lines[0]) + 1), "eos"
                new = self.tok(text, add_special_tokens=False)["input_ids"] + ([self.eos_id] if finish == "eos" else [])
                out.append(SimpleNamespace(prompt_index=k, ids=tuple(new), finish=finish))
        return out


class FavourPRM:
    """Scores a chain by its first line: `favoured` gets `high`, every other line `low`."""

    def __init__(self, tok, high, low, favoured="c"):
        self.tok, self.high, self.low, self.favoured = tok, high, low, favoured

    def score(self, prompts, completions):
        return [self.high if self.tok.decode(c, skip_special_tokens=True).startswith(self.favoured) else self.low
                for c in completions]


@pytest.mark.parametrize("diverse", [False, True])
@pytest.mark.parametrize("select", ["weighted", "best"])
def test_step_search_follows_the_prm(tiny, diverse, select):
    """The PRM favours chains starting with `c` (answer 3): the search must return 3; with the scores
    reversed it must never. Both pruning and the final vote use the scores: ignoring them in either
    keeps chains requested before `c` (answers 1, 2, 4)."""
    _, tok = tiny
    e, sp = ScriptedEngine(tok), SamplingParams(max_new_tokens=40, temperature=1.0)
    prompts = ["12+34=?\n", "5*7=?\n"]
    run = lambda prm: [o.answer for o in step_search(e, prm, prompts, n=4, width=2, params=sp, seed=0,
                                                       diverse=diverse, max_steps=6, select=select)]
    assert run(FavourPRM(tok, high=1.0, low=0.1)) == ["3", "3"]
    reversed_ = run(FavourPRM(tok, high=0.0, low=0.9))
    assert "3" not in reversed_ and None not in reversed_, reversed_


def test_step_search_refuses_bad_shapes(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="multiple of width"):
        step_search(Engine(model, tok), LengthPRM(), PROMPTS, n=5, width=2, params=SamplingParams(8), seed=0)
