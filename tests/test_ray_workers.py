"""Rollout workers on Ray: staleness 0 is the local loop exactly; staleness 1 lags by one version
with importance weights logged; a worker killed with SIGKILL mid-run is restarted and no step is
lost or repeated. One local Ray cluster for the module (2 CPUs, a small object store)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from run_files import max_diff, metrics, weights
from ponder.core.config import ConfigError
from ponder.rl import workers
from ponder.rl.train import RLConfig, train

BASE = dict(model="tiny", task="arithmetic", task_options="min_digits=1 max_digits=2 ops=add", steps=3,
            prompts_per_step=4, group_size=4, max_new_tokens=24, progress=False, tensorboard=False, threads=1,
            device="cpu", save_every=10)
TIMING = ("seconds", "time", "per_s", "rss")


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=80 * 1024 ** 2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory, cluster):
    out = tmp_path_factory.mktemp("local")
    train(RLConfig(out=str(out), **BASE))
    return out


def same_metrics(m_local, m_workers):
    assert [m["step"] for m in m_workers] == [m["step"] for m in m_local]
    for x, y in zip(m_local, m_workers):
        for k, v in x.items():
            if not any(s in k for s in TIMING):
                assert y[k] == pytest.approx(v, abs=1e-6), (x["step"], k, v, y[k])


@pytest.mark.slow
def test_two_workers_at_staleness_0_give_the_local_loop(local, tmp_path):
    train(RLConfig(out=str(tmp_path / "w"), rollout_workers=2, max_staleness=0, **BASE))
    assert max_diff(weights(local), weights(tmp_path / "w")) <= 1e-6
    m = metrics(tmp_path / "w")
    same_metrics(metrics(local), m)
    assert all(x["staleness_max"] == 0 for x in m)


@pytest.mark.slow
def test_staleness_1_samples_with_the_previous_version_and_weights_the_tokens(local, tmp_path):
    train(RLConfig(out=str(tmp_path / "w"), rollout_workers=2, max_staleness=1, **BASE))
    m = metrics(tmp_path / "w")
    assert [x["step"] for x in m] == [1, 2, 3]
    assert [x["staleness_max"] for x in m] == [0, 1, 1]  # step s trains on rollouts of version s - 1
    for x in m:
        assert 0 < x["is_weight_min"] <= x["is_weight_mean"] <= x["is_weight_max"]
    assert abs(m[0]["is_weight_mean"] - 1) < 1e-3  # version 0 trains on its own rollouts: weights ~1
    # the lag changes the update: not the local loop's weights
    assert max_diff(weights(local), weights(tmp_path / "w")) > 1e-6


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_restarted_and_no_step_is_lost(local, tmp_path, monkeypatch):
    pools = []
    init = workers.RolloutPool.__init__

    def keep(self, *a, **kw):
        init(self, *a, **kw)
        pools.append(self)
    monkeypatch.setattr(workers.RolloutPool, "__init__", keep)
    out = tmp_path / "w"
    killed = []

    def killer():
        deadline = time.time() + 900
        while time.time() < deadline:
            if pools and max(pools[0].published, default=0) >= 1:  # step 1 trained, its weights published
                pid = pools[0].pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    train(RLConfig(out=str(out), rollout_workers=2, max_staleness=0, **BASE))
    t.join(5)
    assert killed, "the worker was not killed: the test proved nothing"
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3]  # every step logged, once
    assert max_diff(weights(local), weights(out)) <= 1e-6  # and none trained on twice or lost


def _counting_verifiers(monkeypatch, after_first=None):
    """Record every VerifierPool call (its size); `after_first(pool)` runs once, after the first."""
    calls = []
    call = workers.VerifierPool.__call__

    def counted(self, task, completions, examples):
        out = call(self, task, completions, examples)
        calls.append(len(out))
        if after_first and len(calls) == 1:
            after_first(self)
        return out
    monkeypatch.setattr(workers.VerifierPool, "__call__", counted)
    return calls


@pytest.mark.slow
def test_verifier_workers_give_the_local_loop(local, tmp_path, monkeypatch):
    calls = _counting_verifiers(monkeypatch)
    train(RLConfig(out=str(tmp_path / "v"), verifier_workers=2, **BASE))
    assert sum(calls) == BASE["steps"] * BASE["prompts_per_step"] * BASE["group_size"]  # every verdict came from them
    assert max_diff(weights(local), weights(tmp_path / "v")) <= 1e-6
    same_metrics(metrics(local), metrics(tmp_path / "v"))


@pytest.mark.slow
def test_a_verifier_killed_mid_run_is_restarted_and_no_step_is_lost(local, tmp_path, monkeypatch):
    killed = []

    def kill_one(pool):
        pid = pool.pids()[0]
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    calls = _counting_verifiers(monkeypatch, after_first=kill_one)
    out = tmp_path / "v"
    train(RLConfig(out=str(out), verifier_workers=2, **BASE))
    assert killed and len(calls) == BASE["steps"]
    assert [x["step"] for x in metrics(out)] == [1, 2, 3]
    assert max_diff(weights(local), weights(out)) <= 1e-6


def test_verifier_workers_with_rollout_workers_are_refused_saying_why():
    with pytest.raises(ConfigError, match="rollout workers verify their own samples"):
        RLConfig(rollout_workers=1, verifier_workers=1)


def test_staleness_without_workers_is_refused_saying_why():
    with pytest.raises(ConfigError, match="needs rollout workers"):
        RLConfig(max_staleness=1)
    with pytest.raises(ConfigError, match="must be >= 0"):
        RLConfig(rollout_workers=-1)


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray":
            raise ModuleNotFoundError("No module named 'ray'", name="ray")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'ponder\[distributed\]'"):
        workers.import_ray()
    from ponder.cli import EXTRAS
    assert EXTRAS["ray"] == "distributed"


def test_the_workers_sampling_logprobs_line_up_with_the_update(tiny):
    """Behaviour log-probs (the engine's, per completion token, as a worker records them) placed
    on the update's positions equal the update's own log-probs of the same weights: every
    importance weight is 1."""
    from ponder.engine.engine import Engine, SamplingParams
    from ponder.rl.offpolicy import behaviour_logprobs, is_weight_metrics, truncated_weights
    from ponder.rl.rollout import rollout
    from ponder.rl.train import StepRollouts, build_batch, chunked_logprobs
    from ponder.tasks.spec import build_task
    from dataclasses import replace
    model, tok = tiny
    task = build_task("arithmetic", "min_digits=1 max_digits=2 ops=add")
    engine = Engine(model, tok)
    out = rollout(engine, task, task.examples("train", 3, seed=1), 4, SamplingParams(max_new_tokens=12, logprobs=True),
                  seed=5)
    groups = [replace(g, behaviour_logprobs=tuple(s.logprobs for s in g.samples)) for g in out.groups]
    rolled = StepRollouts(groups, [torch.tensor(g.rewards) for g in groups], {})
    batch = build_batch(rolled, engine.pad_id, lambda r: r - r.mean(-1, keepdim=True))
    prox = chunked_logprobs(model, batch, 16, "fp32")
    assert torch.equal(batch.behaviour_logp, behaviour_logprobs(groups, batch.comp))  # build_batch placed them
    w, sums = truncated_weights(prox, batch.behaviour_logp, batch.comp, cap=2.0)
    stats = is_weight_metrics(sums)
    on = batch.comp > 0
    assert on.sum() > 10
    assert torch.allclose(w[on], torch.ones(int(on.sum())), atol=1e-4), stats
    assert abs(stats["is_weight_mean"] - 1) < 1e-4 and stats["is_clipped_frac"] == 0
    # one position off and the weights are not 1: the test sees a misalignment
    shifted = [replace(g, behaviour_logprobs=tuple(lp[1:] + (0.0,) for lp in g.behaviour_logprobs)) for g in groups]
    bad = is_weight_metrics(truncated_weights(prox, behaviour_logprobs(shifted, batch.comp), batch.comp, 2.0)[1])
    assert bad["is_weight_max"] > 1.01 or bad["is_weight_min"] < 0.99
