"""Inference-time strategies behind one chat request (`strategy` in the OpenAI API).

- `vote`: `n` samples (8 when n is 1), majority vote over their answers
  (self-consistency); the answer's first sample is returned.
- `adaptive`: adaptive consistency — 2 samples, then 2 more at a time, until the
  Beta stopping rule (`ponder.inference.strategies.vote_confidence`) is
  confident enough or `n` samples (16 when n is 1) are drawn; easy questions
  stop after two.

Samples come from the request's seed as sample indices 0, 1, 2, ... so a vote
over k samples sees exactly the first k samples `n=k` would give. Usage counts
every sample's tokens. Best-of-n is not offered: it needs a scorer (a verifier
or reward model) a chat request does not have.
"""

from __future__ import annotations

from collections import Counter

from ponder.core.stats import majority_vote
from ponder.inference.strategies import vote_confidence
from ponder.serve.reasoning import RequestError, split_completion
from ponder.serve.service import Plan, Service

STRATEGIES = ("vote", "adaptive")
VOTE_N, ADAPTIVE_MAX, ADAPTIVE_BATCH, THRESHOLD = 8, 16, 2, 0.95


def answer_of(plan: Plan, sample) -> str:
    return split_completion(sample.text, plan.opened, True, plan.stops, sample.finish == "stop").answer.strip()


async def run_strategy(svc: Service, plan: Plan, strategy: str, n: int, is_disconnected=None):
    """(chosen sample, all samples, details) for `plan`, whose job is the first round."""
    if strategy not in STRATEGIES:  # pragma: no cover - the schema refuses it first
        raise RequestError("strategy", f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    cap = n if n > 1 else (VOTE_N if strategy == "vote" else ADAPTIVE_MAX)
    samples, size = [], cap if strategy == "vote" else min(ADAPTIVE_BATCH, cap)
    while True:
        round_plan = svc.more(plan, len(samples), size)
        svc.submit(round_plan)
        got = await svc.results(round_plan, is_disconnected)
        if not got:  # the client left
            return None, [], {}
        samples += got
        answers = [answer_of(plan, s) for s in samples]
        if strategy == "vote" or len(samples) >= cap or vote_confidence(answers) >= THRESHOLD:
            break
        size = min(ADAPTIVE_BATCH, cap - len(samples))
    winner = majority_vote(answers)
    chosen = next((s for s, a in zip(samples, answers) if a == winner), samples[0])
    counts = Counter(a for a in answers if a)
    details = {"strategy": strategy, "samples": len(samples), "answer": winner,
               "votes": dict(counts.most_common()), "confidence": round(vote_confidence(answers), 4)}
    return chosen, samples, details
