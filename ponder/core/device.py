"""Where tensors live: `--device auto|cpu|cuda`, resolved in one place.

Every verb that loads a model takes a `device` field (declared once, in
`RunFields`); `load_model(..., device=...)` puts the weights there, and the
engine, caches and batches follow the model (`of(model)`), so a GPU run needs
no code change. What stays on the CPU on purpose: each row's random uniforms
are drawn from a CPU `torch.Generator` (the same seed gives the same tokens on
any device), and Python-side bookkeeping (token lists, verdicts).

    >>> resolve("cpu")
    device(type='cpu')
    >>> resolve("gpu")
    Traceback (most recent call last):
    ...
    ponder.core.config.ConfigError: device 'gpu' is not valid; choose one of: auto, cpu, cuda
"""

from __future__ import annotations

import contextlib
import os

import torch

from ponder.core.config import DEVICES, ConfigError


def resolve(name: str) -> torch.device:
    """`auto` -> cuda when torch sees a GPU, else cpu; `cuda` without a GPU is refused.
    Under torchrun (LOCAL_RANK set) each process takes its own GPU of the node."""
    if name not in DEVICES:
        raise ConfigError(f"device {name!r} is not valid; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but torch sees no GPU (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process on the node
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return torch.device(name)


def of(module: torch.nn.Module) -> torch.device:
    """The device a model's parameters live on (CPU for a model without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def autocast(dtype: torch.dtype = torch.bfloat16):
    """Autocast to `dtype` for CPU tensors, and for CUDA tensors too when there is a GPU:
    the caller need not know where the model is (each kind only touches its own ops)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", dtype=dtype))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", dtype=dtype))
        yield


def move(batch, device: torch.device):
    """A dataclass of tensors (e.g. an `RLBatch`) with every tensor field on `device` (others as they are)."""
    import dataclasses
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device)
                                         for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), torch.Tensor)})
