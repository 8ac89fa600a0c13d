"""One rollout: sample `n` completions per example and verify them, as typed groups.

Every verb that samples and checks -- train, eval, scale, collect, train-prm,
overthink -- calls `rollout`, so they share one seeding rule and one
concurrent verifier:

- row (i, j) -- sample j of example i -- draws from its own random stream
  seeded by `row_seed(seed, index_offset + i, j)`: i is the example's index in
  the whole request, never its position in a generation chunk, so the groups
  are identical at any `chunk` size (tested at 1, 7 and 64);
- verification runs concurrently over a whole chunk (`verify_batch`): a
  verifier that raises gives an `invalid` verdict for that sample, never a
  lost batch.

A `Group` is the hand-off between stages: the example, its samples, their
verdicts and rewards, and the policy version that sampled them (asynchronous
RL will let rollouts lag the policy; the version says by how much).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ponder.core.verdict import Verdict
from ponder.engine.engine import Engine, Sample, SamplingParams, row_seed
from ponder.tasks.base import Example, Task
from ponder.verifiers.batch import verify_batch

# (sample, verdict) -> reward; invalid verdicts get NaN whatever this returns (see `rewards_of`)
RewardFn = Callable[[Sample, Verdict], float]


def verdict_score(sample: Sample, verdict: Verdict) -> float:
    """The default reward: the verifier's score."""
    return verdict.score


@dataclass(frozen=True)
class Group:
    example: Example
    samples: tuple[Sample, ...]  # (n,)
    verdicts: tuple[Verdict, ...]  # (n,), one per sample
    rewards: tuple[float, ...]  # (n,), NaN where the verdict is invalid (the checker could not judge)
    policy_version: int = 0  # the policy step that sampled this group
    # (n,) per completion token, the log-probs under the policy that sampled (asynchronous RL's
    # behaviour policy, filled in by rollout workers when rollouts may lag); () when not computed
    behaviour_logprobs: tuple[tuple[float, ...], ...] = ()

    @property
    def correct(self) -> list[bool]:
        return [v.status == "correct" for v in self.verdicts]

    @property
    def valid(self) -> list[bool]:
        return [v.status != "invalid" for v in self.verdicts]


@dataclass(frozen=True)
class RolloutResult:
    groups: list[Group]
    generated_tokens: int
    seconds: float  # generation time (verification excluded)


def rewards_of(samples, verdicts, reward: RewardFn) -> tuple[float, ...]:
    """Rewards of one group; an invalid verdict teaches nothing, so its reward is NaN.

    >>> from ponder.core.verdict import correct, invalid
    >>> rewards_of([None, None], [correct(""), invalid("x")], lambda s, v: v.score)
    (1.0, nan)
    """
    return tuple(math.nan if v.status == "invalid" else float(reward(s, v)) for s, v in zip(samples, verdicts))


def request_chunks(engine: Engine, examples: list[Example], n: int, seed: int, index_offset: int, chunk: int):
    """(start, examples, prompt ids, seeds) per generation batch of at most `chunk` prompts (0 = all
    at once). Row (i, j) of the request draws from `row_seed(seed, index_offset + i, j)` whatever the
    chunk: the seeding rule every rollout shares, so `chunk` changes memory and speed, never a sample."""
    size = chunk if chunk > 0 else max(1, len(examples))
    for start in range(0, len(examples), size):
        part = examples[start:start + size]
        seeds = [[row_seed(seed, index_offset + start + i, j) for j in range(n)] for i in range(len(part))]
        yield start, part, [engine.encode(ex.prompt) for ex in part], seeds


def rollout(engine: Engine, task: Task, examples: list[Example], n: int, params: SamplingParams,
            seed: int, chunk: int = 0, reward: RewardFn = verdict_score, index_offset: int = 0,
            max_tokens: list[int] | None = None, policy_version: int = 0, verify=verify_batch) -> RolloutResult:
    """`n` verified samples of each example, as one `Group` per example (in order).

    `chunk` bounds the prompts per generation batch (0 = all at once); it changes
    memory and speed, never the result. `max_tokens` gives a per-example
    completion limit (default: `params.max_new_tokens`). `verify` has `verify_batch`'s
    signature (a pool of verifier workers, `ponder.rl.workers.VerifierPool`, is one)."""
    if max_tokens is not None and len(max_tokens) != len(examples):
        raise ValueError(f"max_tokens has {len(max_tokens)} entries for {len(examples)} examples")
    groups, tokens, seconds = [], 0, 0.0
    for start, part, ids, seeds in request_chunks(engine, examples, n, seed, index_offset, chunk):
        limits = [max_tokens[start + i] if max_tokens else params.max_new_tokens for i in range(len(part))]
        flat = engine.generate_ids(ids, n, params, seeds, limits)
        tokens += engine.last_stats.generated_tokens
        seconds += engine.last_stats.seconds
        verdicts = verify(task, [s.text for s in flat], [ex for ex in part for _ in range(n)])
        for i, ex in enumerate(part):
            samples, vs = tuple(flat[i * n:(i + 1) * n]), tuple(verdicts[i * n:(i + 1) * n])
            groups.append(Group(ex, samples, vs, rewards_of(samples, vs, reward), policy_version))
    return RolloutResult(groups, tokens, seconds)
