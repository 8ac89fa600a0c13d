"""A value head: features of a state -> one number (a PRM's logit, PPO's value estimate).

The PRM (`ponder.inference.prm`) reads frozen features of a step prefix; PPO
(`ponder.rl.ppo`) reads the policy's last hidden state at every completion
position and trains with it.
"""

from __future__ import annotations

import torch


class ValueHead(torch.nn.Module):
    """(N, D) features -> (N,) values, through a small MLP on standardised features."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)
