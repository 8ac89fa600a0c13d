"""PPO's critic side as small pure functions: per-token GAE and the clipped value loss.

With `advantage = "gae"` the policy gets a value head (`ponder.models.value_head`) on
its last hidden state; each completion token t has a value V_t, the verifier's
reward arrives at the last token, and

    delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last token = 0)
    A_t     = delta_t + gamma * lam * A_{t+1}      (generalised advantage estimation)
    R_t     = A_t + V_t                            (the value target)

Open-Reasoner-Zero runs plain PPO with gamma = lam = 1 and no KL: then A_t is the
final reward minus V_t, a per-token baseline learned instead of the group mean.
Shapes: B rows, T completion positions, `mask` (B, T) marks real completion tokens
(contiguous within a row).

Also here: adaptive entropy control (Skywork-OR1), `entropy_coef_update` and
`entropy_bonus_weight`, used by every advantage estimator, not only GAE.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) sequence rewards -> (B, T): each reward on its row's last completion token.

    >>> token_rewards(torch.tensor([1.0, 0.5]), torch.tensor([[1., 1., 0.], [1., 1., 1.]]))
    tensor([[0.0000, 1.0000, 0.0000],
            [0.0000, 0.0000, 0.5000]])
    """
    T = mask.size(1)
    last = (mask * torch.arange(1, T + 1, device=mask.device)).argmax(dim=1)  # index of the last real token
    out = torch.zeros_like(mask)
    out[torch.arange(mask.size(0), device=mask.device), last] = rewards * (mask.sum(1) > 0)
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) token rewards, values and mask -> (advantages, returns), both (B, T), 0 off the mask.

    >>> adv, ret = gae(torch.tensor([[0., 1.]]), torch.tensor([[0.25, 0.5]]), torch.ones(1, 2))
    >>> adv.tolist(), ret.tolist()
    ([[0.75, 0.5]], [[1.0, 1.0]])
    """
    B, T = mask.shape
    adv = torch.zeros(B, T, device=mask.device)
    next_value, next_adv = torch.zeros(B, device=mask.device), torch.zeros(B, device=mask.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        next_value = torch.where(m > 0, values[:, t], next_value * 0)  # past the row's end: nothing follows
        next_adv = torch.where(m > 0, a, next_adv * 0)
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> zero mean, unit std over the masked entries (0 elsewhere).

    >>> whiten(torch.tensor([[1., 3., 9.]]), torch.tensor([[1., 1., 0.]])).tolist()
    [[-0.7071062922477722, 0.7071062922477722, 0.0]]
    """
    n = mask.sum().clamp_min(1.0)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp_min(1.0)
    return (x - mean) / (var.sqrt() + EPS) * mask


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> torch.Tensor:
    """(B, T) per-token 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) (PPO's value clipping).

    >>> round(clipped_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), 0.2).item(), 4)
    0.32
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def entropy_coef_update(coef: float, entropy: float, target: float, step: float, max_coef: float) -> float:
    """Skywork-OR1's adaptive entropy control, the coefficient's update after a step whose mean
    token entropy was `entropy`: c_{k+1} = c_k + step while entropy is below `target`, c_k - step
    once it is at or above, clipped to [0, max_coef]. The coefficient remembers the level that held
    entropy up last time; `entropy_bonus_weight` decides whether it is applied.

    >>> entropy_coef_update(0.0, 0.1, 0.3, 0.01, 0.05), entropy_coef_update(0.05, 0.5, 0.3, 0.01, 0.05)
    (0.01, 0.04)
    """
    coef = coef + step if entropy < target else coef - step
    return min(max(coef, 0.0), max_coef)


def entropy_trend(trend: float, entropy: float, previous: float | None, smoothing: float = 0.5) -> float:
    """The controller's estimate of entropy's change per step: an exponential average of the
    steps' changes (the newest weighted `smoothing`); 0 before there are two steps.

    >>> entropy_trend(0.0, 0.10, None), round(entropy_trend(0.0, 0.10, 0.14), 6), round(entropy_trend(-0.02, 0.09, 0.10), 6)
    (0.0, -0.02, -0.015)
    """
    if previous is None:
        return 0.0
    return (1 - smoothing) * trend + smoothing * (entropy - previous)


def entropy_forecast(entropy: float | None, trend: float, lookahead: float) -> float | None:
    """Entropy `lookahead` steps on at the current trend (never below 0): what the bonus answers
    with a lookahead, since a bonus takes steps to turn a fall (the optimizer's momentum and the
    policy gradient carry it on). None stays None (no step yet).

    >>> entropy_forecast(0.06, -0.01, 3), entropy_forecast(0.06, -0.05, 3), entropy_forecast(None, -0.01, 3)
    (0.03, 0.0, None)
    """
    if entropy is None:
        return None
    return max(0.0, round(entropy + lookahead * trend, 12))


def entropy_bonus_weight(coef: float, entropy: float | None, target: float, gain: float = 0.0,
                         max_coef: float = float("inf")) -> float:
    """The entropy bonus's weight in the loss: c_k while entropy is below `target`, else 0
    (Skywork-OR1's alpha_k = c_k * 1[e_k < target]). Without the gate a coefficient that is
    still coming down keeps pushing entropy up after it passed the target (wind-up: 2.3 nats on
    the quickstart). Departure from the paper: `entropy` is the previous step's (ponder measures
    it in the update's own forward pass, after the loss is built); None (no step yet) -> 0.

    `gain` adds a proportional term, gain * (target - e_k) / target, capped with c_k at
    `max_coef`: c_k integrates (it needs steps to climb), the proportional term answers a fall
    the same step and vanishes as soon as entropy is back, so a fast first collapse is met
    without the integral winding up (a PI controller; gain 0 is the paper's rule).

    >>> entropy_bonus_weight(0.02, 0.01, 0.05), entropy_bonus_weight(0.02, 0.06, 0.05), entropy_bonus_weight(0.02, None, 0.05)
    (0.02, 0.0, 0.0)
    >>> round(entropy_bonus_weight(0.02, 0.04, 0.05, gain=0.5), 6), entropy_bonus_weight(0.02, 0.0, 0.05, 1.0, 0.5)
    (0.12, 0.5)
    """
    if entropy is None or entropy >= target:
        return 0.0
    return min(coef + gain * (target - entropy) / target, max_coef)
