"""A seconds-long GRPO run on a trivially learnable task: reward rises. Plus checkpoints."""

import json

import pytest
import torch

from ponder.core import checkpoint as ckpt
from ponder.models.model import TinyModelConfig, new_tiny, save_model
from ponder.tasks import TASKS
from ponder.tasks.base import Example, Task
from ponder.rl.train import RLConfig, train
from ponder.core.verdict import Verdict


class DigitsTask(Task):
    """Reward = share of the completion's characters that are digits (graded, always learnable)."""

    name = "digits"

    def examples(self, split, n, seed=0):
        return [Example(id=f"{split}{seed}-{i}", prompt=f"{i % 7}:", answer="") for i in range(n)]

    def verify(self, completion, example):
        if not completion:
            return Verdict(0.0, "wrong", "empty")
        share = sum(c.isdigit() for c in completion) / len(completion)
        return Verdict(share, "correct" if share >= 0.5 else "wrong", f"{share:.2f} digits")


@pytest.fixture
def small_model(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "digits", DigitsTask)
    model, tok = new_tiny(TinyModelConfig(hidden_size=32, layers=1, heads=2, mlp_ratio=2), seed=0)
    return str(save_model(model, tok, tmp_path / "base"))


def _cfg(model, out, **kw):
    base = dict(model=model, task="digits", out=str(out), steps=30, prompts_per_step=4, group_size=8,
                max_new_tokens=8, lr=3e-3, warmup=1, seed=0, save_every=10, tensorboard=False, progress=False)
    base.update(kw)
    return RLConfig(**base)


def test_reward_rises_on_trivial_task(small_model, tmp_path):
    out = tmp_path / "run"
    train(_cfg(small_model, out))
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.2, (first, last)
    for key in ("reward", "accuracy", "zero_var_frac", "think_len_mean", "trunc_rate", "entropy", "kl",
                "clip_frac", "tokens_per_s", "step_time", "self_check_frac"):
        assert key in rows[-1], key
    assert (out / "model" / "model.safetensors").is_file()
    assert [p.name for p in ckpt.complete(out / "checkpoints")] == ["step-000020", "step-000030"]


@pytest.mark.parametrize("variant", [dict(advantage="rloo"), dict(scale_rewards=False, loss_agg="sequence"),
                                     dict(dynamic_sampling=True, kl_coef=0.1, epochs=2, minibatches=2)])
def test_variants_run(small_model, tmp_path, variant):
    out = tmp_path / "v"
    train(_cfg(small_model, out, steps=3, **variant))
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_resume_equals_uninterrupted(small_model, tmp_path):
    full = tmp_path / "full"
    train(_cfg(small_model, full, steps=6, save_every=3))
    part = tmp_path / "part"
    train(_cfg(small_model, part, steps=3, save_every=3))  # "crashed" after step 3
    train(_cfg(small_model, part, steps=6, save_every=3), resume=True)
    from safetensors.torch import load_file
    a = load_file(full / "model" / "model.safetensors")
    b = load_file(part / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_partial_checkpoint_is_ignored(tmp_path):
    root = tmp_path / "ck"
    (root / "step-000009").mkdir(parents=True)  # no COMPLETE marker: a write that was killed
    model, tok = new_tiny(TinyModelConfig(hidden_size=32, layers=1, heads=2, mlp_ratio=2))
    ckpt.save(root, 5, model, tok, {"optimizer": {}})
    assert ckpt.latest(root).name == "step-000005"


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(small_model, tmp_path, monkeypatch):
    import ponder.rl.train as T

    out = tmp_path / "nan"
    real = T.clipped_policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, clipped = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] > 4 else loss), clipped

    monkeypatch.setattr(T, "clipped_policy_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"at step 3; stopped. Last good checkpoint: .*step-000002"):
        train(_cfg(small_model, out, steps=6, save_every=2))
    assert [p.name for p in ckpt.complete(out / "checkpoints")] == ["step-000002"]


def test_ctrl_c_saves_and_says_how_to_resume(small_model, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "int"
    code = (
        "import sys; from ponder.tasks import TASKS; sys.path.insert(0, %r); "
        "from test_train import DigitsTask, _cfg; TASKS['digits'] = DigitsTask; "
        "from ponder.rl.train import train; train(_cfg(%r, %r, steps=10**6, save_every=10**6))"
        % (os.path.dirname(__file__), small_model, str(out))
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "checkpoint saved" in output and "ponder train --resume" in output, output[-2000:]
    saved = ckpt.latest(out / "checkpoints")
    assert saved is not None and int(saved.name.split("-")[1]) >= 2


def test_resume_keeps_the_metrics_of_the_checkpointed_step(small_model, tmp_path):
    out = tmp_path / "log"
    train(_cfg(small_model, out, steps=3, save_every=3))
    train(_cfg(small_model, out, steps=5, save_every=3), resume=True)
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_row_chunks_respect_row_and_token_caps():
    from ponder.rl.train import row_chunks
    lengths = torch.tensor([5, 3, 9, 9, 2, 7, 1, 4])
    rows = torch.arange(8)
    # rows of similar length together, every row exactly once
    for micro_batch, max_tokens in [(16, 0), (3, 0), (0, 18), (3, 10), (0, 5)]:
        chunks = row_chunks(rows, lengths, micro_batch, max_tokens)
        assert sorted(torch.cat(chunks).tolist()) == list(range(8))
        for c in chunks:
            assert not micro_batch or len(c) <= micro_batch
            # a chunk costs rows x its longest row; a single over-long row still gets a chunk
            assert not max_tokens or len(c) == 1 or len(c) * int(lengths[c].max()) <= max_tokens
    assert [c.tolist() for c in row_chunks(rows, lengths, 0, 18)] == [[6, 4, 1, 7], [0, 5], [2, 3]]
    assert len(row_chunks(rows, lengths, 0, 0)) == 1


def test_chunk_token_cap_follows_the_model_size():
    from ponder.rl.train import ACTIVATION_BUDGET, chunk_tokens
    tiny, _ = new_tiny(TinyModelConfig())
    width = tiny.config.hidden_size * tiny.config.num_hidden_layers
    assert chunk_tokens(tiny, -1) == ACTIVATION_BUDGET // width
    assert chunk_tokens(tiny, 0) == 0 and chunk_tokens(tiny, 500) == 500
    with pytest.raises(Exception, match="micro_batch_tokens"):
        RLConfig(micro_batch_tokens=-2)


class AnythingGoesTask(DigitsTask):
    """Every completion is correct: only the length reward can tell samples apart."""

    name = "anything"

    def verify(self, completion, example):
        return Verdict(1.0, "correct", "anything goes")


def test_length_reward_shortens_completions(small_model, tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "anything", AnythingGoesTask)
    out = tmp_path / "short"
    train(_cfg(small_model, out, task="anything", steps=25, length_weight=1.0, dynamic_sampling=True))
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["resp_len_mean"] for r in rows[:5]) / 5
    last = sum(r["resp_len_mean"] for r in rows[-5:]) / 5
    assert last < first - 1.0, (first, last)
    # without it every group is all-correct: nothing to learn from, nothing used
    flat = tmp_path / "flat"
    train(_cfg(small_model, flat, task="anything", steps=2, dynamic_sampling=True, max_refills=0))
    assert all(json.loads(l)["groups_used"] == 0 for l in (flat / "metrics.jsonl").read_text().splitlines())


def test_length_weight_must_not_be_negative(small_model, tmp_path):
    with pytest.raises(Exception, match="length_weight"):
        _cfg(small_model, tmp_path, length_weight=-0.5)
