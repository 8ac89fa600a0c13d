"""ponder.core.stats against hand-computed values and brute-force enumeration."""

import doctest
import itertools
import math
import random

import pytest

from ponder.core import stats
from ponder.core.stats import (
    maj_at_k, majority_vote, mean_ci, mean_pass_at_k, pass_at_k, per_problem_ci,
    weighted_vote, wilson_ci,
)


def test_doctests():
    result = doctest.testmod(stats)
    assert result.attempted > 0 and result.failed == 0


def _pass_at_k_brute(n: int, c: int, k: int) -> float:
    # Samples 0..c-1 are the correct ones; count k-subsets that contain one.
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_hand_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - math.comb(7, 2) / math.comb(10, 2))
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    # Stable where the binomials would overflow a float.
    assert 0.0 < pass_at_k(2000, 1, 1) < 1.0
    assert pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000)


@pytest.mark.parametrize("n,c,k,named", [
    (4, 1, 5, "k=5"), (4, 1, 0, "k=0"), (4, 5, 1, "c=5"), (4, -1, 1, "c=-1"), (0, 0, 1, "n=0"),
])
def test_pass_at_k_bad_args_name_the_value(n, c, k, named):
    with pytest.raises(ValueError, match=named):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_int():
    with pytest.raises(TypeError, match="k"):
        pass_at_k(4, 1, 1.0)


def test_mean_pass_at_k():
    correct = [[True, False, False, False], [True, True, False, False]]
    assert mean_pass_at_k(correct, 1) == pytest.approx((0.25 + 0.5) / 2)
    assert mean_pass_at_k(correct, 2) == pytest.approx((0.5 + (1 - 1 / 6)) / 2)
    with pytest.raises(ValueError, match="problem 0 has 4 samples"):
        mean_pass_at_k(correct, 5)


def test_majority_vote_tie_goes_to_first_occurrence():
    assert majority_vote(["b", "a", "a", "b"]) == "b"
    assert majority_vote(["a", "b", "b", "a"]) == "a"
    assert majority_vote(["x", "y", "z"]) == "x"


def test_majority_vote_ignores_missing_answers():
    assert majority_vote([None, None, "", "  ", "5"]) == "5"
    assert majority_vote([]) is None
    assert majority_vote([None, ""]) is None


def test_majority_vote_is_deterministic_under_repeats():
    rng = random.Random(0)
    answers = [rng.choice(["1", "2", "3", None]) for _ in range(50)]
    assert len({majority_vote(answers) for _ in range(10)}) == 1


def test_weighted_vote():
    assert weighted_vote(["a", "b", "b"], [0.5, 0.3, 0.3]) == "b"
    assert weighted_vote(["a", "b", "b"], [0.7, 0.3, 0.3]) == "a"
    assert weighted_vote(["a", None], [0.0, 5.0]) == "a"
    with pytest.raises(ValueError, match="2 answers but 1 weights"):
        weighted_vote(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="not finite"):
        weighted_vote(["a"], [float("nan")])


def test_maj_at_k_uses_only_first_k_samples():
    problem = [("1", False), ("2", True), ("2", True), ("1", False), ("1", False)]
    assert maj_at_k([problem], 3) == 1.0  # "2" wins 2-1 among the first three
    assert maj_at_k([problem], 5) == 0.0  # "1" wins 3-2 among all five
    assert maj_at_k([problem], 1) == 0.0
    assert maj_at_k([[(None, False), (None, False)]], 2) == 0.0


def test_maj_at_k_bad_args():
    with pytest.raises(ValueError, match="k=0"):
        maj_at_k([[("1", True)]], 0)
    with pytest.raises(ValueError, match="problem 1 has 1 samples"):
        maj_at_k([[("1", True), ("1", True)], [("1", True)]], 2)
    with pytest.raises(ValueError, match="no problems"):
        maj_at_k([], 1)


@pytest.mark.parametrize("seed", range(5))
def test_mean_ci_contains_mean(seed):
    rng = random.Random(seed)
    values = [rng.gauss(3.0, 2.0) for _ in range(20)]
    m, lo, hi = mean_ci(values)
    assert lo <= m <= hi
    assert m == pytest.approx(sum(values) / len(values))
    s = math.sqrt(sum((v - m) ** 2 for v in values) / 19)
    assert hi - m == pytest.approx(1.96 * s / math.sqrt(20))


def test_mean_ci_clips_rates_to_unit_interval():
    # mean 2/3, s = sqrt(1/3), half-width 1.96*s/sqrt(3) = 0.6533: hi would be 1.32.
    m, lo, hi = mean_ci([1.0, 1.0, 0.0])
    assert hi == 1.0 and lo == pytest.approx(2 / 3 - 1.96 / 3)
    # Values outside [0, 1] are not clipped.
    _, lo, _ = mean_ci([-1.0, 0.0, 1.0])
    assert lo < 0.0


def test_mean_ci_bad_args():
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])
    with pytest.raises(ValueError, match=r"values\[1\] is not finite"):
        mean_ci([0.0, float("inf")])


def test_wilson_ci_hand_values_and_bounds():
    lo, hi = wilson_ci(5, 10)
    # p=0.5, n=10, z=1.96: centre 0.5, half-width 1.96*sqrt(0.025+0.009604)/1.38416 = 0.26341
    assert (lo, hi) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and 0.0 < lo < 1.0
    for s in range(0, 11):
        lo, hi = wilson_ci(s, 10)
        assert 0.0 <= lo <= s / 10 <= hi <= 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson_ci(11, 10)
    with pytest.raises(ValueError, match="n=0"):
        wilson_ci(0, 0)


def test_per_problem_ci_uses_problem_level_spread():
    correct = [[True] * 4, [False] * 4, [True, True, False, False]]
    m, lo, hi = per_problem_ci(correct)
    assert m == pytest.approx(0.5)
    assert (m, lo, hi) == pytest.approx(mean_ci([1.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match="problem 1 has no samples"):
        per_problem_ci([[True], []])
