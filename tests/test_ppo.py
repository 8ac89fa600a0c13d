"""PPO with a value head (advantage = "gae"); entropy control is in test_entropy_control.py."""

import pytest
import torch

from run_files import metrics as _rows
from ponder.core import checkpoint as ckpt
from ponder.rl.ppo import clipped_value_loss, gae, token_rewards, whiten
from ponder.rl.train import train

from test_train import _cfg, small_model  # noqa: F401 (fixture)


def test_gae_with_gamma_lambda_one_is_reward_minus_value():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.4, 0.8, 9.0], [0.5, 0.2, 9.0, 9.0]]) * mask
    r = token_rewards(torch.tensor([1.0, 0.0]), mask)
    adv, ret = gae(r, values, mask, 1.0, 1.0)
    assert torch.allclose(adv, (torch.tensor([[1.0], [0.0]]) - values) * mask)
    assert torch.allclose(ret, torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 0]]))


def test_gae_discounts_by_hand():
    mask, values = torch.ones(1, 2), torch.tensor([[0.5, 0.25]])
    adv, _ = gae(token_rewards(torch.tensor([1.0]), mask), values, mask, gamma=0.5, lam=0.5)
    d1 = 1.0 - 0.25  # last token: reward, nothing after it
    d0 = 0.0 + 0.5 * 0.25 - 0.5
    assert adv.tolist() == [[pytest.approx(d0 + 0.25 * d1), pytest.approx(d1)]]


def test_value_clipping_and_whitening():
    v, old, ret = torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]])
    assert clipped_value_loss(v, old, ret, 0.5).item() == pytest.approx(0.5 * 1.5 ** 2)  # the clipped term binds
    w = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert w[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6) and w[0, 3].item() == 0.0


def test_ppo_learns_and_its_critic_fits(small_model, tmp_path):
    out = tmp_path / "ppo"
    train(_cfg(small_model, out, advantage="gae"))
    rows = _rows(out)
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.1, (first, last)  # 0.10 -> 0.29 measured; no learning stays near 0.1
    assert rows[-1]["value_loss"] < rows[0]["value_loss"], (rows[0]["value_loss"], rows[-1]["value_loss"])
    assert "value_head" in ckpt.load_state(ckpt.latest(out / "checkpoints"))


def test_ppo_resume_equals_uninterrupted(small_model, tmp_path):
    """The value head and its optimizer state are in the checkpoint: a resumed run is exact."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(_cfg(small_model, full, steps=6, save_every=3, advantage="gae"))
    train(_cfg(small_model, part, steps=3, save_every=3, advantage="gae"))
    train(_cfg(small_model, part, steps=6, save_every=3, advantage="gae"), resume=True)
    assert [r["value_loss"] for r in _rows(full)] == pytest.approx([r["value_loss"] for r in _rows(part)], abs=1e-9)
    a = ckpt.load_state(ckpt.latest(full / "checkpoints"))["value_head"]
    b = ckpt.load_state(ckpt.latest(part / "checkpoints"))["value_head"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
