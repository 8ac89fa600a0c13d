"""What a step's rollouts looked like: pure functions over samples and verdicts."""

from __future__ import annotations

import re
import resource
from statistics import mean

from ponder.core.think import thinking_text

# Self-checking in a chain of thought: explicit checks, "wait", re-verification.
_SELF_CHECK = re.compile(r"\b(check|wait|verify|double[- ]check|let me check|recompute|re-compute)\b", re.I)


def shows_self_check(completion: str) -> bool:
    """Does the thinking contain a self-check (the "aha" signal)?

    >>> shows_self_check("<think>8+7=15 so 5\\ncheck: 7+8=15</think>15"), shows_self_check("<think></think>15")
    (True, False)
    """
    return bool(_SELF_CHECK.search(thinking_text(completion)))


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def rollout_metrics(samples, verdicts, rewards) -> dict[str, float]:
    """Reward, accuracy and length statistics of a list of samples (flat)."""
    n = len(samples)
    if n == 0:
        return {}
    lengths = [len(s.ids) for s in samples]
    thinks = [s.thinking_tokens for s in samples]
    return {
        "reward": mean(rewards),
        "accuracy": sum(v.status == "correct" for v in verdicts) / n,
        "invalid_frac": sum(v.status == "invalid" for v in verdicts) / n,
        "resp_len_mean": mean(lengths),
        "resp_len_max": max(lengths),
        "think_len_mean": mean(thinks),
        "think_len_max": max(thinks),
        "trunc_rate": sum(s.truncated for s in samples) / n,
        "self_check_frac": sum(shows_self_check(s.text) for s in samples) / n,
    }
