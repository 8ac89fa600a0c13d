"""GRPO and its family as small pure functions.

Shapes: P prompts (groups), G samples per group, B = P*G rows, T completion
tokens (right-padded, `mask` marks real tokens).

The algorithm, one step (see `ponder.rl.train.rl_step` for the loop):
  1. sample G completions per prompt with the current policy      (engine)
  2. score each with the task's verifier                          (rewards)
     optionally plus a group-relative length reward (`length_rewards`, Kimi k1.5):
     among a group's samples, shorter correct ones gain and longer ones lose
  3. advantages relative to the group: `grpo_advantages` (optionally without
     the std division — Dr. GRPO) or `rloo_advantages`
  4. optionally drop groups whose rewards all agree (`informative_groups`) and
     sample more prompts to refill the batch (DAPO dynamic sampling)
  5. per-token clipped surrogate with importance ratios against the policy
     that sampled (`clipped_policy_loss`; clip-higher = asymmetric eps)
  6. optional KL to a frozen reference (`kl_k3`), off by default
  7. aggregate over tokens: `token_mean` (DAPO) or `sequence_mean` (GRPO paper)
Each variant is its own function; `ponder.train` picks them once from the config.
"""

from __future__ import annotations

import torch

EPS = 1e-6

# Invalid verdicts (the checker could not judge) arrive as NaN rewards. They are left out
# of every group statistic -- mean, std, leave-one-out baseline, length range -- and get
# advantage 0: filling them with the group mean instead would shrink the std and inflate
# the valid rows' advantages. Groups without NaN take the plain formulas unchanged.


def _masked(rewards: torch.Tensor, plain: torch.Tensor, masked_fn) -> torch.Tensor:
    """`plain` for groups without NaN, `masked_fn(rewards, valid)` for the others."""
    valid = ~torch.isnan(rewards)
    if bool(valid.all()):
        return plain
    return torch.where(valid.all(dim=1, keepdim=True), plain, masked_fn(rewards, valid))


def grpo_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """(P, G) -> (P, G): reward minus the group mean, divided by the group std if `scale`.

    `scale=False` is Dr. GRPO, which drops the std division (it over-weights
    near-uniform groups). Uses the unbiased std, as the GRPO paper's code does.
    NaN rewards (invalid verdicts) are left out of the statistics and get 0.

    >>> grpo_advantages(torch.tensor([[1., 0., 0., 1.]]), scale=False)
    tensor([[ 0.5000, -0.5000, -0.5000,  0.5000]])
    >>> grpo_advantages(torch.tensor([[1., 0., float("nan")]]), scale=False)
    tensor([[ 0.5000, -0.5000,  0.0000]])
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    plain = centered / (rewards.std(dim=1, keepdim=True) + EPS) if scale else centered
    return _masked(rewards, plain, lambda r, v: _masked_grpo(r, v, scale))


def _masked_grpo(rewards: torch.Tensor, valid: torch.Tensor, scale: bool) -> torch.Tensor:
    n = valid.sum(dim=1, keepdim=True)
    mean = torch.where(valid, rewards, 0.0).sum(dim=1, keepdim=True) / n.clamp_min(1)
    centered = torch.where(valid & (n >= 2), rewards - mean, 0.0)
    if not scale:
        return centered
    std = (centered.pow(2).sum(dim=1, keepdim=True) / (n - 1).clamp_min(1)).sqrt()
    return centered / (std + EPS)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) -> (P, G): reward minus the mean of the *other* G-1 samples (leave-one-out).
    NaN rewards (invalid verdicts) are neither baselines nor targets: they get 0.

    >>> rloo_advantages(torch.tensor([[1., 0., 0.]]))
    tensor([[ 1.0000, -0.5000, -0.5000]])
    >>> rloo_advantages(torch.tensor([[1., 0., 0., float("nan")]]))
    tensor([[ 1.0000, -0.5000, -0.5000,  0.0000]])
    """
    G = rewards.size(1)
    if G < 2:
        raise ValueError(f"RLOO needs at least 2 samples per group, got {G}")
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)
    return _masked(rewards, rewards - others, _masked_rloo)


def _masked_rloo(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    n = valid.sum(dim=1, keepdim=True)
    r = torch.where(valid, rewards, 0.0)
    others = (r.sum(dim=1, keepdim=True) - r) / (n - 1).clamp_min(1)
    return torch.where(valid & (n >= 2), r - others, 0.0)


def tool_call_costs(calls: torch.Tensor, correct: torch.Tensor, cost: float) -> torch.Tensor:
    """(P, G) tool calls per completion and (P, G) correctness -> (P, G) reward terms: -cost per
    call on a correct completion, 0 on a wrong one. A right answer worked out by hand is then worth
    more than the same answer from a tool, so RL keeps the calls where hand work fails (ToRL's and
    ReTool's point: the model learns when a call pays); a wrong answer gains nothing from skipping one.

    >>> tool_call_costs(torch.tensor([[0, 1, 2, 1]]), torch.tensor([[True, True, True, False]]), 0.1)
    tensor([[ 0.0000, -0.1000, -0.2000,  0.0000]])
    """
    return torch.where(correct & (calls > 0), -cost * calls.float(), torch.zeros_like(calls, dtype=torch.float))


def length_rewards(lengths: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(P, G) completion lengths and (P, G) bool correctness -> (P, G) length rewards.

    Kimi k1.5's long2short reward: within a group, lam = 0.5 - (len - min) / (max - min),
    from +0.5 for the shortest sample to -0.5 for the longest. Correct samples get lam;
    wrong ones get min(0, lam), so being short never pays for being wrong. Groups whose
    samples are all the same length get 0. Rows with `valid` False (invalid verdicts) take
    no part in the range and get 0.

    >>> length_rewards(torch.tensor([[10., 20., 30., 30.]]), torch.tensor([[True, True, True, False]]))
    tensor([[ 0.5000,  0.0000, -0.5000, -0.5000]])
    >>> length_rewards(torch.tensor([[10., 30.]]), torch.tensor([[False, True]]))
    tensor([[ 0.0000, -0.5000]])
    """
    lengths = lengths.float()
    valid = torch.ones_like(correct) if valid is None else valid
    lo = torch.where(valid, lengths, torch.inf).min(dim=1, keepdim=True).values
    span = torch.where(valid, lengths, -torch.inf).max(dim=1, keepdim=True).values - lo
    ranged = valid & (span > 0)  # span is NaN/-inf where fewer than one valid row
    lam = torch.where(ranged, 0.5 - (lengths - lo) / span.clamp_min(EPS), torch.zeros_like(lengths))
    return torch.where(correct, lam, lam.clamp(max=0.0))


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) -> (P,) bool: groups whose valid (non-NaN) rewards are not all equal (they carry a gradient).

    >>> informative_groups(torch.tensor([[1., 1.], [0., 1.], [1., float("nan")]]))
    tensor([False,  True, False])
    """
    valid = ~torch.isnan(rewards)
    hi = torch.where(valid, rewards, -torch.inf).max(dim=1).values
    lo = torch.where(valid, rewards, torch.inf).min(dim=1).values
    return (valid.sum(dim=1) >= 2) & ((hi - lo) > EPS)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                        eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO surrogate loss and clip indicator, both (B, T).

    logp, old_logp: (B, T) log-probs of the sampled tokens under the current
    and the sampling policy; adv: (B,) one advantage per sequence, or (B, T) one per token.
    Loss is -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) with r = exp(logp - old_logp);
    eps_high > eps_low is DAPO's clip-higher.

    >>> loss, clipped = clipped_policy_loss(torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([2.0]), 0.2, 0.2)
    >>> loss.item(), clipped.item()
    (-2.0, False)
    """
    ratio = torch.exp(logp - old_logp)
    a = adv if adv.dim() == 2 else adv[:, None]  # (B, T) per-token advantages (PPO/GAE) or (B,) per sequence
    unclipped = ratio * a
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    surrogate = torch.minimum(unclipped, clipped_ratio * a)
    was_clipped = (clipped_ratio * a) < unclipped  # the clip bound was the active term
    return -surrogate, was_clipped


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - logp.

    Unbiased and always >= 0 (Schulman's "Approximating KL divergence").

    >>> kl_k3(torch.tensor([0.0]), torch.tensor([0.0])).item()
    0.0
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over every real token in the batch (DAPO): long answers weigh per token.

    >>> token_mean(torch.tensor([[1., 1.], [4., 0.]]), torch.tensor([[1., 1.], [1., 0.]])).item()
    2.0
    """
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences (the GRPO paper).

    >>> sequence_mean(torch.tensor([[1., 1.], [4., 0.]]), torch.tensor([[1., 1.], [1., 0.]])).item()
    2.5
    """
    per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return per_seq.mean()


ADVANTAGES = {"grpo": grpo_advantages, "rloo": rloo_advantages}
AGGREGATIONS = {"token": token_mean, "sequence": sequence_mean}


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) -> (B, T) log-probabilities of `targets`."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, T) entropy of each next-token distribution, in nats."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
