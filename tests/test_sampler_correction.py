"""`sampler_correction`: the local loop weights each completion token by
min(pi_update / pi_sampler, is_cap), the sampler's log-probs recorded as it samples.

In fp32 the sampler (ponder's decoder on the policy itself) and the update compute the same
numbers, so every weight is 1 and the run is the uncorrected run; in bf16 the sampler is a
bf16 copy and the update autocasts, their numbers differ, and the weights show it."""

from __future__ import annotations

import pytest

from run_files import max_diff, metrics, weights
from ponder.core.config import ConfigError
from ponder.rl.train import RLConfig, train

BASE = dict(model="tiny", task="arithmetic", task_options="min_digits=1 max_digits=2 ops=add", steps=2,
            prompts_per_step=4, group_size=4, max_new_tokens=24, progress=False, tensorboard=False, threads=1,
            device="cpu", save_every=10, lr=1e-3)


def run(tmp_path, name, **kw):
    out = tmp_path / name
    train(RLConfig(out=str(out), **BASE, **kw))
    return metrics(out), weights(out)


def test_in_fp32_every_weight_is_one_and_the_run_is_the_plain_run(tmp_path):
    plain, w_plain = run(tmp_path, "plain")
    fixed, w_fixed = run(tmp_path, "corrected", sampler_correction=True)
    assert all("is_weight_mean" not in m for m in plain)
    for m in fixed:
        assert abs(m["is_weight_mean"] - 1) < 1e-3 and m["is_clipped_frac"] == 0, m
        assert m["is_weight_min"] > 0.99 and m["is_weight_max"] < 1.01, m
    assert [m["reward"] for m in fixed] == [m["reward"] for m in plain]
    assert max_diff(w_plain, w_fixed) < 1e-4


def test_in_bf16_the_weights_see_the_mismatch_and_change_the_update(tmp_path):
    plain, w_plain = run(tmp_path, "plain", precision="bf16")
    fixed, w_fixed = run(tmp_path, "corrected", precision="bf16", sampler_correction=True)
    first = fixed[0]
    assert first["is_weight_min"] < 1 < first["is_weight_max"], first  # bf16 copy vs autocast: not the same numbers
    assert plain[0]["reward"] == first["reward"]  # the same samples: only the update differs
    assert max_diff(w_plain, w_fixed) > 0


def test_with_tools_it_is_refused_saying_why():
    with pytest.raises(ConfigError, match="sampler_correction with tools"):
        RLConfig(**BASE, sampler_correction=True, tools="calculator")


def test_rollout_precision_samples_in_one_precision_and_updates_in_the_other(tmp_path):
    split, _ = run(tmp_path, "split", rollout_precision="bf16", sampler_correction=True)  # fp32 update
    fp32, _ = run(tmp_path, "fp32", rollout_precision="fp32", sampler_correction=True)
    for m in split:  # a bf16 sampler's numbers differ from the fp32 update's by percents (tiny model: 3-7%)
        assert m["is_weight_min"] < 0.99 and m["is_weight_max"] > 1.01, m
    for m in fp32:  # fp32 both sides: the same numbers
        assert m["is_weight_min"] > 0.999 and m["is_weight_max"] < 1.001, m
    with pytest.raises(ConfigError, match="rollout_precision = 'fp16' is not valid; choose one of: same, fp32, bf16"):
        RLConfig(**BASE, rollout_precision="fp16")


@pytest.mark.parametrize("precision, rollout_precision, dtype", [
    ("fp32", "bf16", "bfloat16"), ("bf16", "fp32", "float32"), ("bf16", "same", "bfloat16"), ("fp32", "same", "float32")])
def test_a_rollout_worker_samples_in_the_rollout_precision(precision, rollout_precision, dtype):
    """The Ray rollout actor (`ponder.rl.workers.RolloutWorker`, built here as the plain class it is)
    holds its policy copy in the dtype the local loop samples in, not the update's."""
    import torch
    from ponder.rl.workers import RolloutWorker
    cfg = RLConfig(**BASE, precision=precision, rollout_precision=rollout_precision)
    worker = RolloutWorker(cfg)
    assert {p.dtype for p in worker.model.parameters()} == {getattr(torch, dtype)}
