"""reasoning-gym datasets as ponder tasks: disjoint splits, the dataset's scorer, failures as invalid."""

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed")

from ponder.core.config import ConfigError  # noqa: E402
from ponder.tasks.base import split_of  # noqa: E402
from ponder.tasks.reasoning_gym import ReasoningGymTask, reasoning_gym_task  # noqa: E402


def done(answer: str) -> str:
    return f"<think>counting</think>{answer}"


@pytest.fixture(scope="module")
def legs():
    return reasoning_gym_task("rg:leg_counting")


def test_splits_are_disjoint_and_deterministic(legs):
    train = legs.examples("train", 60, seed=0)
    test = legs.examples("test", 30, seed=0)
    assert len(train) == 60 and len(test) == 30
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert all(split_of(e.prompt) == "train" for e in train)
    assert all(split_of(e.prompt) == "test" for e in test)
    assert [e.id for e in legs.examples("test", 30, seed=0)] == [e.id for e in test]
    other_seed = legs.examples("train", 60, seed=1)
    assert {e.prompt for e in other_seed} != {e.prompt for e in train}
    assert not {e.prompt for e in other_seed} & {e.prompt for e in test}


def test_scored_by_the_datasets_own_scorer(legs):
    ex = legs.examples("test", 1)[0]
    assert legs.verify(done(ex.answer), ex).ok
    assert legs.verify(done(f"<answer>{ex.answer}</answer>"), ex).ok
    assert legs.verify(done(str(int(ex.answer) + 1)), ex).status == "wrong"


@pytest.mark.parametrize("completion", ["", "<think>x", "<think>x</think>", "<think>x</think>  "])
def test_no_answer_is_wrong(legs, completion):
    ex = legs.examples("test", 1)[0]
    v = legs.verify(completion, ex)
    assert v.status == "wrong" and v.score == 0.0


def test_partial_credit_is_off_by_default(legs):
    ex = legs.examples("test", 1)[0]
    doubled = done(f"{ex.answer} {ex.answer}")  # leg_counting gives ~0.4 for this upstream
    assert legs.verify(doubled, ex).score == 0.0
    lenient = ReasoningGymTask("leg_counting", partial_credit=True)
    assert 0.0 < lenient.verify(doubled, ex).score < 1.0


def test_scorer_errors_and_bad_scores_are_invalid(legs):
    ex = legs.examples("test", 1)[0]

    class Broken:
        def score_answer(self, answer, entry):
            raise ValueError("scorer bug")

    class Weird:
        def score_answer(self, answer, entry):
            return float("nan")

    for scorer in (Broken(), Weird()):
        legs._scorer, saved = scorer, legs._scorer
        try:
            assert legs.verify(done(ex.answer), ex).status == "invalid"
        finally:
            legs._scorer = saved


def test_config_and_names_are_checked():
    with pytest.raises(ConfigError, match="valid: .*leg_counting"):
        ReasoningGymTask("no_such_dataset")
    with pytest.raises(ConfigError, match="refused config"):
        ReasoningGymTask("leg_counting", no_such_option=3)
    task = ReasoningGymTask("basic_arithmetic", min_terms=2, max_terms=2)
    assert task.examples("train", 3)


def test_long_answers_are_refused_before_the_scorer(legs):
    ex = legs.examples("test", 1)[0]
    v = legs.verify(done("lorem " * 1000 + ex.answer), ex)
    assert v.status == "wrong" and "characters" in v.reason
