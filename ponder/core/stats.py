"""Evaluation statistics: pass@k, voting, maj@k and confidence intervals.

Pure functions over plain Python values (no model, no I/O), so `evaluate.py`
and the report can share them and the tests can check them by hand.
Every function validates its arguments and names the offending value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Codex").

    pass@k = 1 - C(n-c, k) / C(n, k), computed as the product
    prod_{i=n-c+1}^{n} (1 - k/i), which avoids the huge binomials.

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> round(pass_at_k(4, 1, 2), 6)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(4, 3, 2)  # any 2 of 4 include a correct one
    1.0
    >>> pass_at_k(5, 0, 3)
    0.0
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"pass_at_k: {name} must be an int, got {v!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be in [0, n={n}], got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems; `correct[p]` holds problem p's per-sample outcomes.

    >>> mean_pass_at_k([[True, False], [False, False]], 1)
    0.25
    >>> mean_pass_at_k([[True, False], [False, False]], 2)
    0.5
    """
    if not correct:
        raise ValueError("mean_pass_at_k: no problems given")
    total = 0.0
    for p, outcomes in enumerate(correct):
        if len(outcomes) < k:
            raise ValueError(f"mean_pass_at_k: problem {p} has {len(outcomes)} samples, fewer than k={k}")
        total += pass_at_k(len(outcomes), sum(bool(o) for o in outcomes), k)
    return total / len(correct)


def _valid_answer(a: str | None) -> bool:
    # An extracted answer of None or blank means "the model gave no answer";
    # it must not win a vote against a real answer.
    return a is not None and a.strip() != ""


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """The answer with the largest total weight; ties go to the earliest first occurrence.

    None and blank answers are ignored; returns None if no valid answer remains.

    >>> weighted_vote(["7", "8", "8"], [3.0, 1.0, 1.0])
    '7'
    >>> weighted_vote(["7", "8"], [1.0, 1.0])  # tie -> the one seen first
    '7'
    >>> weighted_vote([None, ""], [1.0, 1.0]) is None
    True
    """
    if len(answers) != len(weights):
        raise ValueError(f"weighted_vote: {len(answers)} answers but {len(weights)} weights")
    totals: dict[str, float] = {}  # insertion order = first occurrence, used for ties
    for a, w in zip(answers, weights):
        if not math.isfinite(w):
            raise ValueError(f"weighted_vote: weight for answer {a!r} is not finite: {w!r}")
        if _valid_answer(a):
            totals[a] = totals.get(a, 0.0) + w
    if not totals:
        return None
    # max() returns the first maximal item, so dict order breaks ties deterministically.
    return max(totals, key=totals.__getitem__)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common valid answer; ties go to the earliest first occurrence.

    >>> majority_vote(["3", "4", "4", "3", None, None, None])
    '3'
    >>> majority_vote([None, "5", "6", "6"])
    '6'
    >>> majority_vote([None, " "]) is None
    True
    """
    return weighted_vote(answers, [1.0] * len(answers))


def maj_at_k(samples: Sequence[Sequence[tuple[str | None, bool]]], k: int) -> float:
    """Fraction of problems whose majority answer among the first k samples is correct.

    `samples[p]` is problem p's list of (extracted answer, correct) pairs in
    sampling order. A problem with no valid answer among its first k counts
    as wrong.

    >>> maj_at_k([[("4", True), ("5", False), ("4", True)],
    ...           [("1", False), ("2", True), ("1", False)]], 3)
    0.5
    >>> maj_at_k([[("5", False), ("4", True)]], 1)
    0.0
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"maj_at_k: k must be an int >= 1, got k={k!r}")
    if not samples:
        raise ValueError("maj_at_k: no problems given")
    hits = 0
    for p, pairs in enumerate(samples):
        if len(pairs) < k:
            raise ValueError(f"maj_at_k: problem {p} has {len(pairs)} samples, fewer than k={k}")
        first_k = pairs[:k]
        winner = majority_vote([a for a, _ in first_k])
        # Equal answers get equal verdicts from a verifier, so the first
        # sample carrying the winning answer speaks for all of them.
        hits += winner is not None and next(ok for a, ok in first_k if a == winner)
    return hits / len(samples)


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its normal-approximation interval, mean ± z·s/√n.

    s is the sample standard deviation (ddof=1). When every value lies in
    [0, 1] (accuracies, rates) the interval is clipped to [0, 1]. With a
    single value the spread is unknown, so the interval is unbounded
    ([0, 1] after clipping) rather than a misleading zero width.

    >>> mean_ci([0.0, 1.0, 1.0, 0.0])
    (0.5, 0.0, 1.0)
    >>> m, lo, hi = mean_ci([2.0, 4.0, 6.0]); (m, round(lo, 3), round(hi, 3))
    (4.0, 1.737, 6.263)
    >>> mean_ci([0.5])
    (0.5, 0.0, 1.0)
    """
    if len(values) == 0:
        raise ValueError("mean_ci: no values given")
    if not z > 0:
        raise ValueError(f"mean_ci: z must be > 0, got z={z!r}")
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(f"mean_ci: values[{i}] is not finite: {v!r}")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        lo, hi = -math.inf, math.inf
    else:
        var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
        half = z * math.sqrt(var / n)
        lo, hi = mean - half, mean + half
    if all(0.0 <= v <= 1.0 for v in values):
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return mean, lo, hi


def wilson_ci(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion successes/n.

    Preferred over mean ± z·SE for 0/1 outcomes: it stays inside [0, 1] and
    does not collapse to zero width at 0% or 100%.

    >>> lo, hi = wilson_ci(5, 10); (round(lo, 4), round(hi, 4))
    (0.2366, 0.7634)
    >>> lo, hi = wilson_ci(0, 10); (lo, round(hi, 4))
    (0.0, 0.2775)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"wilson_ci: n must be an int >= 1, got n={n!r}")
    if isinstance(successes, bool) or not isinstance(successes, int) or not 0 <= successes <= n:
        raise ValueError(f"wilson_ci: successes must be an int in [0, n={n}], got {successes!r}")
    if not z > 0:
        raise ValueError(f"wilson_ci: z must be > 0, got z={z!r}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def per_problem_ci(correct: Sequence[Sequence[bool]], z: float = 1.96) -> tuple[float, float, float]:
    """(accuracy, lo, hi) for accuracy = mean over problems of each problem's success rate.

    Samples of one problem are correlated, so the standard error is taken
    across problems (n = number of problems), not across all samples,
    which would overstate the precision.

    >>> m, lo, hi = per_problem_ci([[True, True], [False, False], [True, False], [True, True]])
    >>> (m, round(lo, 4), hi)
    (0.625, 0.1559, 1.0)
    """
    if not correct:
        raise ValueError("per_problem_ci: no problems given")
    rates = []
    for p, outcomes in enumerate(correct):
        if len(outcomes) == 0:
            raise ValueError(f"per_problem_ci: problem {p} has no samples")
        rates.append(sum(bool(o) for o in outcomes) / len(outcomes))
    return mean_ci(rates, z)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "A and B are equally good" each problem that exactly
    one of them solves is a fair coin, so min(only_a, only_b) is Binomial(only_a + only_b, 1/2) tail.

    >>> mcnemar_exact_p(0, 0)
    1.0
    >>> round(mcnemar_exact_p(1, 9), 4)  # 2 * (1 + 10) / 2**10
    0.0215
    """
    for name, v in (("only_a", only_a), ("only_b", only_b)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"mcnemar_exact_p: {name} must be an int >= 0, got {v!r}")
    m, k = only_a + only_b, min(only_a, only_b)
    if m == 0:
        return 1.0
    tail = math.fsum(math.comb(m, i) for i in range(k + 1)) / 2.0 ** m
    return min(1.0, 2.0 * tail)


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = 1.96) -> dict:
    """Accuracy of B minus accuracy of A on the same problems, with its interval.

    `a[i]` and `b[i]` are the two models' outcomes on problem i. The interval is
    the normal one on the per-problem differences d_i = b_i - a_i (each -1, 0 or
    +1): mean(d) ± z·s/√n, s their sample standard deviation. Pairing removes
    the problems both solve or both miss from the noise, so it is much narrower
    than two separate Wilson intervals. It rests on the problems only one model
    solves; with few of them it is rough (none gives a zero-width interval), so
    the exact McNemar p-value from the same counts is reported alongside.

    >>> r = paired_difference([True, True, False, False, True], [True, False, True, True, True])
    >>> r["only_a"], r["only_b"], r["both"], r["neither"], r["diff"]
    (1, 2, 2, 0, 0.2)
    >>> round(r["lo"], 4), round(r["hi"], 4), r["mcnemar_p"]
    (-0.5334, 0.9334, 1.0)
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} outcomes for A but {len(b)} for B")
    if len(a) < 2:
        raise ValueError(f"paired_difference: needs at least 2 problems, got {len(a)}")
    if not z > 0:
        raise ValueError(f"paired_difference: z must be > 0, got z={z!r}")
    n = len(a)
    only_a = sum(bool(x) and not y for x, y in zip(a, b))
    only_b = sum(bool(y) and not x for x, y in zip(a, b))
    both = sum(bool(x) and bool(y) for x, y in zip(a, b))
    diff = (only_b - only_a) / n
    # sum of squared deviations of d_i from their mean, d_i in {-1, 0, +1}
    ss = only_b * (1 - diff) ** 2 + only_a * (1 + diff) ** 2 + (n - only_a - only_b) * diff ** 2
    half = z * math.sqrt(ss / (n - 1) / n)
    return {"n": n, "acc_a": (only_a + both) / n, "acc_b": (only_b + both) / n, "diff": diff,
            "lo": max(-1.0, diff - half), "hi": min(1.0, diff + half), "z": z,
            "only_a": only_a, "only_b": only_b, "both": both, "neither": n - only_a - only_b - both,
            "mcnemar_p": mcnemar_exact_p(only_a, only_b)}
