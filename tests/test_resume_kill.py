"""kill -9 a real training process, resume, and get bit-for-bit the weights of an uninterrupted run.

The killed run is a subprocess (`ponder sft` / `ponder train` through a small
harness that pauses after each logged step, so the kill lands between steps,
or hangs inside a checkpoint write); the uninterrupted and resumed runs are in
process. Everything is fp32 on one CPU thread.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ponder.core import checkpoint as ckpt
from ponder.stages.sft import SFTConfig, sft
from ponder.tasks import TASKS
from ponder.rl.train import RLConfig, train
from r1_fixtures import DigitsTask, small_model, write_traces

REPO = Path(__file__).resolve().parents[1]
HARNESS = r"""
import os, sys, time
from pathlib import Path
import ponder.core.checkpoint as ck
import ponder.core.runlog as runlog
from ponder.tasks import TASKS
from r1_fixtures import DigitsTask
TASKS["digits"] = DigitsTask

real_log = runlog.RunLog.log
def paused_log(self, step, metrics):
    real_log(self, step, metrics)
    time.sleep(float(os.environ.get("STEP_PAUSE", "0")))  # room for the kill; changes no number
runlog.RunLog.log = paused_log

if os.environ.get("HANG_IN_CHECKPOINT"):  # "N:FLAG": hang in the N-th checkpoint write, weights half saved
    n, flag = os.environ["HANG_IN_CHECKPOINT"].split(":", 1)
    calls, real_rng = [0], ck.rng_state
    def rng_then_hang():
        calls[0] += 1
        if calls[0] == int(n):
            Path(flag).touch()
            time.sleep(600)
        return real_rng()
    ck.rng_state = rng_then_hang

from ponder.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _argv(verb: str, cfg) -> list[str]:
    return [verb] + [a for k, v in vars(cfg).items() for a in (f"--{k.replace('_', '-')}", str(v))]


def _spawn(argv: list[str], **env) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen([sys.executable, "-c", HARNESS, *argv], cwd=REPO, env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 120):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: rc={proc.returncode}\n{proc.stderr.read().decode()}")
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _kill(proc: subprocess.Popen):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


@pytest.fixture(scope="module")
def sft_setup(tmp_path_factory):
    """A 12-step SFT run (12 traces, batch 4, 4 epochs, checkpoint every 2 steps), its uninterrupted
    result, and the two runs to kill, started first so that their start-up overlaps the reference run."""
    d = tmp_path_factory.mktemp("sft")
    model, data = small_model(d / "base"), write_traces(d / "traces.jsonl", 12)
    cfg = SFTConfig(model=model, data=str(data), out=str(d / "full"), epochs=4, batch_size=4, lr=3e-3,
                    warmup=2, save_every=2, seed=3, threads=1, progress=False)
    k = random.randint(3, 10)  # steps done when killed; the run has 12, so >= 2 pauses remain
    between = SFTConfig(**{**vars(cfg), "out": str(d / f"killed-{k}")})
    in_write = SFTConfig(**{**vars(cfg), "out": str(d / "killed-in-write")})
    flag = d / "in-write"
    procs = {"between": _spawn(_argv("sft", between), STEP_PAUSE=0.15),
             "in_write": _spawn(_argv("sft", in_write), HANG_IN_CHECKPOINT=f"3:{flag}")}  # the write of step 6
    before = torch.get_num_threads()
    full = sft(cfg)
    torch.set_num_threads(before)
    yield {"cfg": cfg, "full": full, "k": k, "between": between, "in_write": in_write, "flag": flag, "procs": procs}
    for p in procs.values():  # a failed test may leave one running
        if p.poll() is None:
            _kill(p)


def test_sft_kill9_at_random_step_then_resume_is_exact(sft_setup):
    k, run, proc = sft_setup["k"], sft_setup["between"], sft_setup["procs"]["between"]
    _wait_for(lambda: _lines(Path(run.out) / "metrics.jsonl") >= k, proc, f"step {k}")
    _kill(proc)
    last = ckpt.latest(Path(run.out) / "checkpoints")
    assert last is not None and int(last.name[5:]) <= k, (k, last)
    resumed = sft(run, resume=True)
    assert _max_diff(sft_setup["full"], resumed) <= 1e-6, f"killed after step {k}"
    assert _lines(Path(run.out) / "metrics.jsonl") == 12


def test_sft_kill9_during_checkpoint_write_uses_previous_checkpoint(sft_setup):
    run, proc, flag = sft_setup["in_write"], sft_setup["procs"]["in_write"], sft_setup["flag"]
    _wait_for(flag.exists, proc, "the third checkpoint write")
    _kill(proc)
    root = Path(run.out) / "checkpoints"
    partial = root / ".tmp-step-000006"
    assert (partial / "model.safetensors").is_file() and not (partial / ckpt.MARKER).exists()
    assert ckpt.latest(root).name == "step-000004"
    resumed = sft(run, resume=True)
    assert _max_diff(sft_setup["full"], resumed) <= 1e-6


def test_sft_partial_checkpoints_are_ignored_on_resume(sft_setup):
    """A step folder without its marker and a leftover temp folder: resume from the last complete one."""
    import shutil
    cfg, full = sft_setup["cfg"], sft_setup["full"]
    run = SFTConfig(**{**vars(cfg), "out": str(Path(cfg.out).parent / "partial")})
    shutil.copytree(Path(cfg.out) / "checkpoints", Path(run.out) / "checkpoints")  # step-10 and step-12
    root = Path(run.out) / "checkpoints"
    (root / "step-000012" / ckpt.MARKER).unlink()  # a write killed before its marker
    shutil.copytree(root / "step-000010", root / ".tmp-step-000011")  # and one killed before its rename
    assert ckpt.latest(root).name == "step-000010"
    resumed = sft(run, resume=True)
    assert _max_diff(full, resumed) <= 1e-6
    assert ckpt.latest(root).name == "step-000012"


def test_rl_kill9_at_random_step_then_resume_is_exact(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "digits", DigitsTask)
    model = small_model(tmp_path / "base")
    cfg = RLConfig(model=model, task="digits", out=str(tmp_path / "full"), steps=8, prompts_per_step=2,
                   group_size=4, max_new_tokens=6, lr=3e-3, warmup=1, seed=0, save_every=2, threads=1,
                   track_kl=False, tensorboard=False, progress=False)
    k = random.randint(3, 6)
    run = RLConfig(**{**vars(cfg), "out": str(tmp_path / "killed")})
    proc = _spawn(_argv("train", run), STEP_PAUSE=0.15)  # starts up while the reference runs
    train(cfg)
    _wait_for(lambda: _lines(Path(run.out) / "metrics.jsonl") >= k, proc, f"step {k}")
    _kill(proc)
    resumed = train(run, resume=True)
    assert _max_diff(Path(cfg.out) / "model", resumed) <= 1e-6, f"killed after step {k}"
    assert _max_diff(Path(model), resumed) > 0  # the run did train
