"""A seconds-long GRPO run on a trivially learnable task: reward rises. Plus checkpoints."""

import math

import pytest
import torch

from run_files import metrics as _rows
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
    rows = _rows(out)
    assert len(rows) == 30
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.2, (first, last)
    for key in ("reward", "accuracy", "zero_var_frac", "think_len_mean", "trunc_rate", "entropy", "kl",
                "clip_frac", "tokens_per_s", "step_time", "self_check_frac"):
        assert key in rows[-1], key
    assert (out / "model" / "model.safetensors").is_file()
    assert [p.name for p in ckpt.complete(out / "checkpoints")] == ["step-000020", "step-000030"]


def test_advantage_variants_reach_the_gradient(small_model, tmp_path):
    """Step 1 samples the same groups in every run (same start, same seeds) and its importance ratio
    is 1, so the gradient is linear in the advantages: RLOO's (r_i minus the mean of the others) are
    exactly G/(G-1) times Dr. GRPO's (r - mean, no std), and GRPO's divide those by each group's std."""
    G = 8
    norm = {}
    for name, kw in {"grpo": {}, "rloo": dict(advantage="rloo"), "dr_grpo": dict(scale_rewards=False)}.items():
        train(_cfg(small_model, tmp_path / name, steps=1, group_size=G, track_kl=False, **kw))
        (row,) = _rows(tmp_path / name)
        assert math.isfinite(row["loss"]) and row["grad_norm"] > 0, row
        norm[name] = row["grad_norm"]
    assert norm["rloo"] == pytest.approx(G / (G - 1) * norm["dr_grpo"], rel=1e-4), norm
    assert abs(norm["grpo"] / norm["dr_grpo"] - 1) > 0.05, norm  # the std scaling is applied


def test_kl_penalty_enters_the_loss_with_its_coefficient(small_model, tmp_path):
    """Step 1 is identical with and without the penalty (policy = reference: KL 0 and no KL gradient),
    so step 2 starts from the same policy and samples in both runs: its loss differs by exactly
    kl_coef x the measured KL."""
    coef = 0.5
    train(_cfg(small_model, tmp_path / "free", steps=2, kl_coef=0.0, track_kl=True))
    train(_cfg(small_model, tmp_path / "kl", steps=2, kl_coef=coef))
    free, kl = _rows(tmp_path / "free"), _rows(tmp_path / "kl")
    assert free[0]["kl"] == kl[0]["kl"] == 0.0 and free[0]["loss"] == pytest.approx(kl[0]["loss"], abs=1e-7)
    assert kl[1]["kl"] == pytest.approx(free[1]["kl"], rel=1e-5) and kl[1]["kl"] > 0
    assert kl[1]["loss"] - free[1]["loss"] == pytest.approx(coef * kl[1]["kl"], rel=1e-3, abs=1e-7)


class HalfImpossibleTask(DigitsTask):
    """Prompts 0-2 score 0 whatever the answer (their groups never carry a gradient); 3-6 are graded
    like DigitsTask. Prompts are drawn from the seed, so each refill round brings new ones."""

    name = "half_impossible"

    def examples(self, split, n, seed=0):
        import random
        rng = random.Random(seed)
        return [Example(id=f"{split}{seed}-{i}", prompt=f"{rng.randrange(7)}:", answer="") for i in range(n)]

    def verify(self, completion, example):
        if int(example.prompt[0]) < 3:
            return Verdict(0.0, "wrong", "impossible prompt")
        return super().verify(completion, example)


def test_dynamic_sampling_refills_the_batch_with_informative_groups(small_model, tmp_path, monkeypatch):
    import ponder.rl.grpo as grpo
    monkeypatch.setitem(TASKS, "half_impossible", HalfImpossibleTask)
    seen = []  # the (P, G) rewards of every update's groups, as the advantages see them
    real = grpo.ADVANTAGES["rloo"]
    monkeypatch.setitem(grpo.ADVANTAGES, "rloo", lambda r: seen.append(r.clone()) or real(r))
    P = 4
    train(_cfg(small_model, tmp_path / "ds", task="half_impossible", steps=4, prompts_per_step=P,
               advantage="rloo", dynamic_sampling=True, max_refills=8))
    rows = _rows(tmp_path / "ds")
    assert all(r["groups_used"] == P for r in rows), [r["groups_used"] for r in rows]
    assert sum(r["zero_var_frac"] for r in rows) > 0  # first rounds did hold useless groups: refills were needed
    assert len(seen) == 4 and all(r.shape[0] == P for r in seen)
    for r in seen:
        assert bool((r.max(1).values > r.min(1).values).all()), r  # no zero-variance group in an update
    # without dynamic sampling the same steps do train on zero-variance groups
    seen.clear()
    train(_cfg(small_model, tmp_path / "plain", task="half_impossible", steps=4, prompts_per_step=P,
               advantage="rloo"))
    assert any(bool((r.max(1).values == r.min(1).values).any()) for r in seen)


def test_several_epochs_and_minibatches_use_the_rollout_policy_as_old(small_model, tmp_path):
    """After the first minibatch's step the policy has moved: later minibatches' importance ratios leave 1
    and some get clipped. (Recomputing `old` from the current policy would keep every ratio at 1.)"""
    train(_cfg(small_model, tmp_path / "e", steps=3, epochs=2, minibatches=2, loss_agg="sequence",
               clip_low=0.01, clip_high=0.01))
    rows = _rows(tmp_path / "e")
    assert all(math.isfinite(r["loss"]) for r in rows) and max(r["clip_frac"] for r in rows) > 0, rows


def test_lora_resume_equals_uninterrupted(small_model, tmp_path):
    """A LoRA run resumed from its adapter checkpoint ends with the weights of the run that never stopped."""
    from safetensors.torch import load_file
    lora = dict(lora_rank=2, lora_alpha=4.0, track_kl=False, save_every=2)
    train(_cfg(small_model, tmp_path / "full", steps=4, **lora))
    torch.manual_seed(0)
    train(_cfg(small_model, tmp_path / "part", steps=2, **lora))  # "crashed" after step 2
    train(_cfg(small_model, tmp_path / "part", steps=4, **lora), resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "part" / "model" / "model.safetensors")
    base = load_file(f"{small_model}/model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-4  # the adapters did train
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_lora_init_follows_the_seed(small_model, tmp_path):
    from safetensors.torch import load_file
    lora = dict(lora_rank=2, lora_alpha=4.0, track_kl=False, steps=1)
    train(_cfg(small_model, tmp_path / "a", **lora))
    torch.rand(3)  # anything else drawing from the global generator in between
    train(_cfg(small_model, tmp_path / "b", **lora))
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


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
    real, real_update = T.clipped_policy_loss, T.update_policy
    updates = {"n": 0}

    def counted(*args, **kwargs):
        updates["n"] += 1
        return real_update(*args, **kwargs)

    def poisoned(*args, **kwargs):  # from the third step's update on
        loss, clipped = real(*args, **kwargs)
        return (loss * float("nan") if updates["n"] > 2 else loss), clipped

    monkeypatch.setattr(T, "update_policy", counted)
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
    steps = [m["step"] for m in _rows(out)]
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
    rows = _rows(out)
    first = sum(r["resp_len_mean"] for r in rows[:5]) / 5
    last = sum(r["resp_len_mean"] for r in rows[-5:]) / 5
    assert last < first - 1.0, (first, last)
    # without it every group is all-correct: nothing to learn from, nothing used
    flat = tmp_path / "flat"
    train(_cfg(small_model, flat, task="anything", steps=2, dynamic_sampling=True, max_refills=0))
    assert all(m["groups_used"] == 0 for m in _rows(flat))


def test_length_weight_must_not_be_negative(small_model, tmp_path):
    with pytest.raises(Exception, match="length_weight"):
        _cfg(small_model, tmp_path, length_weight=-0.5)
