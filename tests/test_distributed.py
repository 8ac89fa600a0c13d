"""Data parallelism: `torchrun --nproc-per-node 2 -m ponder train` (gloo, 127.0.0.1) gives the
weights and metrics of one process on the same global batch, and rank 0 alone writes the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from run_files import max_diff, metrics, weights
from ponder.rl.distributed import is_main, my_rows, share, world

# Two steps of two minibatches each (four optimizer steps, old log-probs from a separate pass),
# the KL to the start model tracked (a reference pass), zero-advantage rows skipped.
FLAGS = ["--model", "tiny", "--task", "arithmetic", "--task-options", "min_digits=1 max_digits=2 ops=add",
         "--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "24",
         "--minibatches", "2", "--save-every", "1", "--progress", "false", "--tensorboard", "false",
         "--threads", "1", "--device", "cpu"]
# differ by construction: timings, memory, and the padding each rank's own chunks carry
# work, not learning: each rank runs the shared prompt of its own rows' groups (share_prompt), so
# the tokens the update ran differ from one process's
NOT_COMPARED = ("seconds", "time", "per_s", "rss", "padded", "update_tokens")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "ponder", "train", *FLAGS, "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "ponder", "train", *FLAGS, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    one = run(root / "one", 1)
    two = run(root / "two", 2)
    return root, one, two


@pytest.mark.slow
def test_two_ranks_give_the_weights_of_one_process(runs):
    root, _, two = runs
    assert "data-parallel: 2 ranks (gloo)" in two.stdout  # the job really ran as two ranks
    a, b = weights(root / "one"), weights(root / "two")
    start = load_file(_base_weights())
    assert a.keys() == b.keys()
    moved, diff = max_diff(a, start), max_diff(a, b)
    assert moved > 1e-5, "training did not move the weights: the comparison would prove nothing"
    assert diff <= 1e-6, f"2 ranks vs 1 process: max weight difference {diff:.3g}"


def _base_weights():
    from ponder.models.model import BUILTIN_BASE
    return BUILTIN_BASE / "model.safetensors"


@pytest.mark.slow
def test_two_ranks_log_the_metrics_of_one_process_once(runs):
    root, one, two = runs
    m1, m2 = metrics(root / "one"), metrics(root / "two")
    assert [m["step"] for m in m2] == [1, 2]  # rank 0 alone logs: every step once
    for x, y in zip(m1, m2):
        for k, v in x.items():
            if any(s in k for s in NOT_COMPARED):
                continue
            # the log rounds to 6 decimals: values 1e-7 apart may print 1e-6 apart
            assert y[k] == pytest.approx(v, abs=2e-6), (x["step"], k, v, y[k])
    assert sorted(p.name for p in (root / "two" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert two.stdout.count("trained model:") == 1  # and rank 0 alone reports


def test_shares_cover_every_example_once():
    for n in (1, 4, 5, 16):
        for parts in (1, 2, 3):
            cut = [share(n, parts, r) for r in range(parts)]
            assert cut[0][0] == 0 and cut[-1][1] == n and all(a[1] == b[0] for a, b in zip(cut, cut[1:]))


def test_without_torchrun_everything_is_one_process():
    assert world() == 1 and is_main()
    trained = torch.tensor([True, False, True, True])
    assert torch.equal(my_rows(trained, torch.tensor([3, 1, 2, 5]), [torch.arange(4)]), trained)
