"""Off-policy correction for asynchronous GRPO (rollouts that lag the policy by up to K versions).

A rollout sampled by the policy of version v is trained on by the policy of version s >= v.
As in decoupled PPO (AReaL) and truncated importance sampling (TIS), the loss keeps its
clipped ratio against the *proximal* policy -- the current weights before this update, what
`update_policy` calls the old log-probs -- and each completion token's term is weighted by

    w_t = min(pi_prox(y_t) / pi_behaviour(y_t), cap)

where pi_behaviour is the policy that sampled (its log-probs come with the rollout:
`Group.behaviour_logprobs`, recorded by the rollout worker's engine as it sampled). Truncation at
`cap` bounds the variance that a large lag would bring. With K = 0 nothing here runs: the
synchronous loop is unchanged.

The proximal log-probs cost no pass of their own: they are the update's old log-probs, which
on-policy GRPO (one epoch, one minibatch) takes from the first forward itself, detached
(`reuse_logprobs`), so the weights are computed chunk by chunk inside the update
(`ponder.rl.train._chunk_gradients`); and the behaviour log-probs are recorded by the engine
as it samples (`SamplingParams.logprobs`), so K >= 1 adds no log-prob pass anywhere.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ponder.rl.rollout import Group, RolloutResult


def with_behaviour_logprobs(out: RolloutResult) -> RolloutResult:
    """`out` with each group's `behaviour_logprobs` taken from its samples' own log-probs (an
    engine that sampled with `SamplingParams.logprobs`)."""
    if any(len(s.logprobs) != len(s.ids) for g in out.groups for s in g.samples):
        raise ValueError("a sample carries no log-prob for each of its tokens: sample with SamplingParams(logprobs=True)")
    return replace(out, groups=[replace(g, behaviour_logprobs=tuple(s.logprobs for s in g.samples)) for g in out.groups])


def behaviour_logprobs(groups: list[Group], comp: torch.Tensor) -> torch.Tensor:
    """(B, L-1) the sampling policy's log-prob of each completion token, aligned with `comp`
    (position t holds the log-prob of token t + 1); 0 elsewhere."""
    out = torch.zeros(comp.shape, dtype=torch.float32)
    i = 0
    for g in groups:
        if len(g.behaviour_logprobs) != len(g.samples):
            raise ValueError(f"a group of policy version {g.policy_version} carries no sampling log-probs: "
                             f"rollouts that may lag need them (rollout workers record them)")
        for s, lp in zip(g.samples, g.behaviour_logprobs):
            start = len(s.prompt_ids) - 1
            out[i, start:start + len(lp)] = torch.tensor(lp)
            i += 1
    return out.to(comp.device)


def truncated_weights(prox: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, cap: float):
    """(w, sums): w (B, L-1) = min(exp(prox - behaviour), cap) on the mask (1 elsewhere), and the
    sums its statistics come from (`is_weight_metrics`; add the sums of several chunks with
    `add_is_sums`).

    >>> w, sums = truncated_weights(torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, -1.0]]), torch.ones(1, 2), 2.0)
    >>> m = is_weight_metrics(sums)
    >>> w.tolist(), round(m["is_weight_max"], 3), m["is_clipped_frac"]  # the statistics are of the raw ratio
    ([[2.0, 1.0]], 2.718, 0.5)
    """
    raw = torch.exp(prox.float() - behaviour.float())
    on = mask > 0
    w = torch.where(on, raw.clamp(max=cap), torch.ones_like(raw))
    vals = raw[on]
    sums = {"is_n": float(vals.numel()), "is_sum": vals.sum().item(), "is_clipped": (vals > cap).sum().item(),
            "is_min": vals.min().item() if vals.numel() else math.inf,
            "is_max": vals.max().item() if vals.numel() else -math.inf}
    return w, sums


def add_is_sums(total: dict | None, sums: dict) -> dict:
    """Two chunks' importance-weight sums as one."""
    if total is None:
        return dict(sums)
    return {"is_n": total["is_n"] + sums["is_n"], "is_sum": total["is_sum"] + sums["is_sum"],
            "is_clipped": total["is_clipped"] + sums["is_clipped"], "is_min": min(total["is_min"], sums["is_min"]),
            "is_max": max(total["is_max"], sums["is_max"])}


def is_weight_metrics(sums: dict | None) -> dict:
    """The step's importance-weight metrics: mean, min, max of the raw ratio over the tokens
    trained on, and the share above the cap (all 1 / 0 when no token was weighted)."""
    if not sums or not sums["is_n"]:
        return {"is_weight_mean": 1.0, "is_weight_min": 1.0, "is_weight_max": 1.0, "is_clipped_frac": 0.0}
    n = sums["is_n"]
    return {"is_weight_mean": sums["is_sum"] / n, "is_weight_min": sums["is_min"], "is_weight_max": sums["is_max"],
            "is_clipped_frac": sums["is_clipped"] / n}


def staleness_metrics(groups: list[Group], step: int) -> dict:
    """How many versions the step's groups lag the policy that trains on them."""
    lags = [step - g.policy_version for g in groups] or [0]
    return {"staleness_mean": sum(lags) / len(lags), "staleness_max": max(lags)}
