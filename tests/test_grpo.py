"""Advantages and losses equal hand-computed values on toy tensors, for each variant."""

import math

import pytest
import torch

from ponder.rl import grpo


def test_grpo_advantages_scaled_matches_hand_computation():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    std = math.sqrt(((0.75**2) + 3 * (0.25**2)) / 3)  # unbiased std
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / (std + grpo.EPS)
    assert torch.allclose(grpo.grpo_advantages(r, scale=True), expected, atol=1e-6)


def test_dr_grpo_drops_std_division():
    r = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    assert torch.equal(grpo.grpo_advantages(r, scale=False), torch.tensor([[1.0, -1.0], [0.0, 0.0]]))


def test_zero_variance_group_has_zero_advantage_and_is_not_informative():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    adv = grpo.grpo_advantages(r)
    assert torch.equal(adv[0], torch.zeros(3))
    assert grpo.informative_groups(r).tolist() == [False, True]


def test_rloo_is_leave_one_out():
    r = torch.tensor([[3.0, 1.0, 2.0]])
    # 3 - (1+2)/2 = 1.5 ; 1 - (3+2)/2 = -1.5 ; 2 - (3+1)/2 = 0
    assert torch.allclose(grpo.rloo_advantages(r), torch.tensor([[1.5, -1.5, 0.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        grpo.rloo_advantages(torch.tensor([[1.0]]))


def test_clipped_loss_hand_values_and_clip_higher():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1 against old = 0
    old = torch.zeros(1, 3)
    # positive advantage: ratio 1.5 clipped to 1.2 (symmetric) or 1.28 (clip-higher)
    loss, clipped = grpo.clipped_policy_loss(logp, old, torch.tensor([1.0]), 0.2, 0.2)
    assert torch.allclose(loss, torch.tensor([[-1.2, -0.5, -1.1]]), atol=1e-6)
    assert clipped.tolist() == [[True, False, False]]
    loss_hi, _ = grpo.clipped_policy_loss(logp, old, torch.tensor([1.0]), 0.2, 0.28)
    assert torch.allclose(loss_hi, torch.tensor([[-1.28, -0.5, -1.1]]), atol=1e-6)
    # negative advantage: min(r*A, clip(r)*A) picks the more pessimistic term
    loss_neg, clipped_neg = grpo.clipped_policy_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.2)
    assert torch.allclose(loss_neg, torch.tensor([[1.5, 0.8, 1.1]]), atol=1e-6)
    assert clipped_neg.tolist() == [[False, True, False]]


def test_loss_gradient_on_policy_is_advantage_weighted_logprob_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = grpo.clipped_policy_loss(logp, logp.detach(), torch.tensor([0.5]), 0.2, 0.2)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5]]))


def test_kl_k3_hand_value():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    d = -1.0
    assert math.isclose(grpo.kl_k3(logp, ref).item(), math.exp(d) - d - 1, rel_tol=1e-6)
    assert (grpo.kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_token_vs_sequence_aggregation():
    per_tok = torch.tensor([[1.0, 3.0, 0.0], [6.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert grpo.token_mean(per_tok, mask).item() == pytest.approx((1 + 3 + 6) / 3)
    assert grpo.sequence_mean(per_tok, mask).item() == pytest.approx(((1 + 3) / 2 + 6) / 2)


def test_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert grpo.token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.25))
    assert grpo.token_entropy(logits).item() == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))
