"""Off-policy correction for asynchronous GRPO (rollouts that lag the policy by up to K versions).

A rollout sampled by the policy of version v is trained on by the policy of version s >= v.
As in decoupled PPO (AReaL) and truncated importance sampling (TIS), the loss keeps its
clipped ratio against the *proximal* policy -- the current weights before this update, what
`update_policy` calls the old log-probs -- and each completion token's term is weighted by

    w_t = min(pi_prox(y_t) / pi_behaviour(y_t), cap)

where pi_behaviour is the policy that sampled (its log-probs come with the rollout:
`Group.behaviour_logprobs`, computed by the rollout worker that sampled). Truncation at
`cap` bounds the variance that a large lag would bring. With K = 0 nothing here runs: the
synchronous loop is unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ponder.rl.rollout import Group


def behaviour_logprobs(groups: list[Group], comp: torch.Tensor) -> torch.Tensor:
    """(B, L-1) the sampling policy's log-prob of each completion token, aligned with `comp`
    (position t holds the log-prob of token t + 1); 0 elsewhere."""
    out = torch.zeros(comp.shape, dtype=torch.float32)
    i = 0
    for g in groups:
        if len(g.behaviour_logprobs) != len(g.samples):
            raise ValueError(f"a group of policy version {g.policy_version} carries no sampling log-probs: "
                             f"rollouts that may lag need them (rollout workers compute them)")
        for s, lp in zip(g.samples, g.behaviour_logprobs):
            start = len(s.prompt_ids) - 1
            out[i, start:start + len(lp)] = torch.tensor(lp)
            i += 1
    return out.to(comp.device)


def truncated_weights(prox: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, cap: float):
    """(B, L-1) w = min(exp(prox - behaviour), cap) on the mask (1 elsewhere), and its statistics.

    >>> w, m = truncated_weights(torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, -1.0]]), torch.ones(1, 2), 2.0)
    >>> w.tolist(), round(m["is_weight_max"], 3), m["is_clipped_frac"]  # the statistics are of the raw ratio
    ([[2.0, 1.0]], 2.718, 0.5)
    """
    raw = torch.exp(prox - behaviour)
    w = torch.where(mask > 0, raw.clamp(max=cap), torch.ones_like(raw))
    on = mask > 0
    vals = raw[on] if on.any() else torch.ones(1)
    stats = {"is_weight_mean": vals.mean().item(), "is_weight_min": vals.min().item(),
             "is_weight_max": vals.max().item(), "is_clipped_frac": (vals > cap).float().mean().item()}
    return w, stats


def staleness_metrics(groups: list[Group], step: int) -> dict:
    """How many versions the step's groups lag the policy that trains on them."""
    lags = [step - g.policy_version for g in groups] or [0]
    return {"staleness_mean": sum(lags) / len(lags), "staleness_max": max(lags)}


def with_importance_weights(batch, groups: list[Group], prox_logp: torch.Tensor, cap: float):
    """(batch with `is_weight`, metrics): `prox_logp` (B, L-1) is the current policy's log-probs."""
    w, stats = truncated_weights(prox_logp, behaviour_logprobs(groups, batch.comp), batch.comp, cap)
    return replace(batch, is_weight=w), stats
