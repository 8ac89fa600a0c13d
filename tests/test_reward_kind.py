"""`RLConfig.reward`: what a sample earns from its verdict -- the verifier's score (partial
credit) or its correctness alone (exact match pays, nothing else does)."""

from __future__ import annotations

import pytest

from ponder.core.config import ConfigError
from ponder.core.verdict import correct, invalid, wrong
from ponder.rl.rollout import rewards_of
from ponder.rl.train import RLConfig, reward_fn

VERDICTS = [correct("all 7 fields match"), wrong("6/7 fields match", score=6 / 7), wrong("0/7", score=0.0),
            invalid("no answer")]


class Text:
    text = "<think>x</think>42"


def test_score_pays_partial_credit_and_correct_pays_only_an_exact_answer():
    samples = [Text()] * len(VERDICTS)
    score = rewards_of(samples, VERDICTS, reward_fn(RLConfig(reward="score")))
    exact = rewards_of(samples, VERDICTS, reward_fn(RLConfig(reward="correct")))
    assert score[:3] == (1.0, 6 / 7, 0.0) and exact[:3] == (1.0, 0.0, 0.0)
    assert score[3] != score[3] and exact[3] != exact[3]  # invalid: NaN either way, it teaches nothing


def test_the_format_reward_adds_to_either():
    exact = rewards_of([Text()] * 2, VERDICTS[:2], reward_fn(RLConfig(reward="correct", format_weight=0.5)))
    assert exact == (1.5, 0.5)


def test_a_bad_reward_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="reward = 'fields' is not valid; choose one of: score, correct"):
        RLConfig(reward="fields")
