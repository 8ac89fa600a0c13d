"""Data-parallel GRPO with torch.distributed: `torchrun --nproc-per-node N -m ponder train RECIPE`.

Each of the N processes (ranks) holds the whole policy. A step then runs as in one
process, with two parts split between the ranks:

1. rollouts: rank r generates and verifies a contiguous share of the step's prompts
   (`share`), with the row seeds of their *global* index (`rollout(index_offset=...)`),
   and the shares are gathered, so every rank holds exactly the groups one process
   would have sampled;
2. the update: each minibatch's rows are dealt out by length (`row_mask`); a rank runs
   forward/backward on its rows only, against the *whole* minibatch's loss normaliser,
   and the gradients are summed over the ranks (`reduce_gradients`) before clipping and
   the optimizer step. The summed gradient is the one-process gradient (up to float
   summation order), so every rank takes the same step and the weights stay identical.

Rank 0 alone writes (`is_main`): the run lock, metrics, checkpoints, the final model.
gloo on the CPU, nccl on GPUs (one per rank, see `ponder.core.device.resolve`).
Without torchrun (no WORLD_SIZE in the environment) every function here is the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from ponder.core.config import ConfigError
from ponder.rl.rollout import RolloutResult
from ponder.rl.tool_rollout import maybe_tool_rollout


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: from the process group, or from torchrun's RANK before and after it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join the torchrun job for the body (gloo on the CPU, nccl on a GPU); nothing without torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                            device_id=device if device.type == "cuda" else None)
    if is_main():
        print(f"data-parallel: {world()} ranks ({backend}); rank 0 writes the run")
    try:
        yield
    finally:
        dist.destroy_process_group()


def share(n: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of part `index` when `n` items are cut into `parts` contiguous, near-equal parts.

    >>> [share(5, 2, r) for r in range(2)]
    [(0, 2), (2, 5)]
    """
    return n * index // parts, n * (index + 1) // parts


def sharded_rollout(engine, task, examples, n, params, seed, index_offset: int = 0, max_tokens=None,
                    toolbox=None, **kw) -> RolloutResult:
    """`rollout` over this rank's share of `examples`, gathered: every rank gets the groups of all.
    `engine` may be a pool of rollout workers (`ponder.rl.workers`), which splits the work its own way.
    With `toolbox`, the rollouts call tools (`ponder.rl.tool_rollout`; not with workers)."""
    if hasattr(engine, "remote_rollout"):
        if toolbox is not None:
            raise ConfigError("tools with rollout workers are not supported yet")
        return engine.remote_rollout(task, examples, n, params, seed, index_offset=index_offset,
                                     max_tokens=max_tokens, **kw)
    W = world()
    if W == 1:
        return maybe_tool_rollout(engine, task, examples, n, params, seed, toolbox, index_offset=index_offset,
                                  max_tokens=max_tokens, **kw)
    lo, hi = share(len(examples), W, rank())
    mine = maybe_tool_rollout(engine, task, examples[lo:hi], n, params, seed, toolbox, index_offset=index_offset + lo,
                              max_tokens=max_tokens[lo:hi] if max_tokens is not None else None, **kw)
    parts: list = [None] * W
    dist.all_gather_object(parts, mine)
    return RolloutResult([g for p in parts for g in p.groups], sum(p.generated_tokens for p in parts),
                         max(p.seconds for p in parts))  # the ranks generate at the same time


def my_rows(trained: torch.Tensor, lengths: torch.Tensor, minibatches: list[torch.Tensor]) -> torch.Tensor:
    """(B,) bool: the rows of `trained` this rank runs forward/backward on. Within each minibatch
    they are sorted by length and dealt out in turn, so every rank gets its share of the long
    and of the short ones. All of `trained` in one process."""
    W = world()
    if W == 1:
        return trained
    mask = torch.zeros_like(trained)
    for mb in minibatches:
        rows = mb[trained[mb]]
        by_length = rows[lengths[rows].argsort(stable=True)]
        mask[by_length[rank()::W]] = True
    return mask


def reduce_gradients(params: list[torch.nn.Parameter], sums: dict) -> dict:
    """Sum the ranks' gradients (a missing one counts as zeros) and their metric sums."""
    if world() == 1:
        return sums
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective, not one per tensor
    dist.all_reduce(flat)
    at = 0
    for g in grads:
        g.copy_(flat[at:at + g.numel()].view_as(g))
        at += g.numel()
    keys = sorted(sums)
    totals = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=flat.device)
    dist.all_reduce(totals)
    return dict(zip(keys, totals.tolist()))
