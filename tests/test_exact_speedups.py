"""The update's exact speed-ups give the same weights as the plain update (<= 1e-6).

`skip_zero_advantage`: rows whose advantage is exactly 0, or with no loss tokens, get no
forward/backward. `reuse_logprobs`: the first minibatch's old log-probs come from its own
first forward, so on-policy single-epoch GRPO runs no separate log-prob pass.
"""

import copy

import pytest
import torch
from r1_fixtures import DigitsTask, small_model
from run_files import metrics

from ponder.engine.engine import Sample
from ponder.models.lora import trainable_parameters
from ponder.models.model import load_model
from ponder.rl import train as T
from ponder.rl.grpo import AGGREGATIONS, grpo_advantages
from ponder.tasks import TASKS

# 4 groups of 4: informative, all-correct, all-wrong, informative with one invalid verdict (NaN)
REWARDS = [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, float("nan"), 0.0, 0.0]]


def _batch(tok, rewards=REWARDS, seed=2) -> T.RLBatch:
    g = torch.Generator().manual_seed(seed)
    r = torch.tensor(rewards)
    samples = []
    for i in range(r.numel()):
        prompt = tuple(tok(f"{i % 5}+{i}=?\n")["input_ids"])
        ids = tuple(torch.randint(3, len(tok), (2 + (7 * i) % 9,), generator=g).tolist())
        samples.append(Sample(i // r.size(1), i % r.size(1), prompt, ids, "", "length", 0, len(ids)))
    ids, attn, comp = T.pack(samples, tok.pad_token_id)
    comp[torch.isnan(r.reshape(-1))] = 0.0  # as build_batch does: an invalid verdict teaches nothing
    return T.RLBatch(ids, attn, comp, grpo_advantages(r).reshape(-1))


def _updated(model, tok, batches, **kw):
    """A copy of `model` after one update per batch (AdamW, so momentum carries over), and the last stats.

    Skipping rows regroups the others into chunks, so the gradients agree to fp32 rounding
    (~1e-7 relative), not bit for bit; AdamW divides each gradient by its own magnitude, which
    lifts that rounding to a share of lr in near-zero components: lr = 1e-4 keeps it < 1e-6."""
    model = copy.deepcopy(model).train()
    cfg = T.RLConfig(group_size=4, prompts_per_step=4, micro_batch=3, **kw)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-4, betas=(0.9, 0.99))
    stats = None
    for b in batches:
        stats = T.update_policy(model, None, opt, b, cfg, AGGREGATIONS[cfg.loss_agg])
    return model, stats


def _assert_same_weights(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p - q).abs().max().item() <= 1e-6, name


@pytest.mark.parametrize("loss_agg", ["token", "sequence"])
@pytest.mark.parametrize("epochs,minibatches", [(1, 1), (2, 2)])
def test_skipping_zero_advantage_rows_leaves_the_weights_unchanged(tiny, loss_agg, epochs, minibatches):
    model, tok = tiny
    kw = dict(loss_agg=loss_agg, epochs=epochs, minibatches=minibatches)
    on, s_on = _updated(model, tok, [_batch(tok)], skip_zero_advantage=True, **kw)
    off, s_off = _updated(model, tok, [_batch(tok)], skip_zero_advantage=False, **kw)
    assert s_on["skipped_frac"] == 9 / 16 and s_off["skipped_frac"] == 0.0  # 8 zero-advantage rows + 1 invalid
    assert s_on["update_tokens"] < s_off["update_tokens"]  # less work was done ...
    _assert_same_weights(on, off)  # ... for the same update
    assert s_on["loss"] == pytest.approx(s_off["loss"], abs=1e-7)
    assert s_on["clip_frac"] == pytest.approx(s_off["clip_frac"], abs=1e-7)
    assert s_on["grad_norm"] == pytest.approx(s_off["grad_norm"], rel=1e-5)


def test_a_step_with_every_row_skipped_still_steps_the_optimizer_as_before(tiny):
    """All-zero advantages give a zero gradient; AdamW's momentum still moves the weights."""
    model, tok = tiny
    batches = [_batch(tok), _batch(tok, [[1.0] * 4, [0.0] * 4, [1.0] * 4, [0.0] * 4], seed=3)]
    on, s_on = _updated(model, tok, batches, skip_zero_advantage=True)
    off, _ = _updated(model, tok, batches, skip_zero_advantage=False)
    assert s_on["skipped_frac"] == 1.0 and s_on["update_tokens"] == 0
    _assert_same_weights(on, off)


@pytest.mark.parametrize("kw", [dict(kl_coef=0.1), dict(entropy_target=0.5), dict(advantage="gae")])
def test_rows_are_not_skipped_where_the_gradient_would_change(tiny, kw):
    _, tok = tiny
    batch = _batch(tok)
    cfg = T.RLConfig(group_size=4, prompts_per_step=4, **kw)
    only_invalid = (batch.comp.sum(1) == 0)
    assert T.skippable_rows(batch, cfg, 0.0).equal(only_invalid)
    assert T.skippable_rows(batch, T.RLConfig(group_size=4, prompts_per_step=4), 0.01).equal(only_invalid)  # bonus on
    per_token = T.RLBatch(batch.ids, batch.attn, batch.comp, torch.zeros(batch.comp.shape))  # GAE's (B, T) advantages
    assert T.skippable_rows(per_token, T.RLConfig(group_size=4, prompts_per_step=4), 0.0).equal(only_invalid)


@pytest.mark.parametrize("epochs,minibatches", [(1, 1), (1, 2), (2, 2)])
def test_reused_old_logprobs_leave_the_weights_unchanged(tiny, epochs, minibatches, monkeypatch):
    model, tok = tiny
    kw = dict(epochs=epochs, minibatches=minibatches, skip_zero_advantage=False)
    off, _ = _updated(model, tok, [_batch(tok)], reuse_logprobs=False, **kw)
    rows_passed = []
    real = T.chunked_logprobs
    monkeypatch.setattr(T, "chunked_logprobs", lambda *a, **k: rows_passed.append(a[5].numel()) or real(*a, **k))
    on, _ = _updated(model, tok, [_batch(tok)], reuse_logprobs=True, **kw)
    # the separate pass skips the first minibatch's rows: no pass at all for one epoch of one minibatch
    assert rows_passed == ([] if (epochs, minibatches) == (1, 1) else [16 - 16 // minibatches])
    _assert_same_weights(on, off)


def test_a_training_run_is_the_same_with_both_speedups_on_and_off(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "digits", DigitsTask)
    base = small_model(tmp_path / "base")
    finals, rows = [], []
    for on in (True, False):
        out = tmp_path / f"run_{on}"
        cfg = T.RLConfig(model=base, task="digits", out=str(out), steps=3, prompts_per_step=4, group_size=4,
                         max_new_tokens=4, lr=3e-3, warmup=1, seed=0, save_every=10, tensorboard=False,
                         progress=False, skip_zero_advantage=on, reuse_logprobs=on, threads=1)
        finals.append(load_model(str(T.train(cfg)))[0])
        rows.append(metrics(out))
    assert any(r["skipped_frac"] > 0 for r in rows[0]) and all(r["skipped_frac"] == 0 for r in rows[1])
    _assert_same_weights(*finals)
    assert [r["reward"] for r in rows[0]] == [r["reward"] for r in rows[1]]
    for key in ("time_generation", "time_verification", "time_logprobs", "time_fwd_bwd", "time_optimizer",
                "time_other"):
        assert all(key in r for r in rows[0]), key
    r = rows[0][-1]
    parts = sum(r[k] for k in r if k.startswith("time_"))
    assert parts == pytest.approx(r["step_time"], abs=1e-4)  # metrics.jsonl rounds each value


def _lagging(model, batch, shift: float = 0.3, seed: int = 4):
    """`batch` as if sampled by another policy: behaviour log-probs = the model's own, jittered."""
    logp = T.chunked_logprobs(model, batch, 16, "fp32")
    g = torch.Generator().manual_seed(seed)
    noise = shift * torch.randn(logp.shape, generator=g)
    return T.RLBatch(batch.ids, batch.attn, batch.comp, batch.adv, behaviour_logp=(logp + noise) * batch.comp)


@pytest.mark.parametrize("epochs,minibatches", [(1, 1), (2, 2)])
def test_importance_weights_from_the_first_forward_equal_a_separate_proximal_pass(tiny, epochs, minibatches):
    """Lagging rollouts: the proximal log-probs of the importance weights come from the update's
    own first forward (`reuse_logprobs`), not a pass of their own: the same weights and the same
    importance-weight metrics as with the separate pass; and the weights do change the update."""
    model, tok = tiny
    batch = _lagging(model, _batch(tok))
    kw = dict(epochs=epochs, minibatches=minibatches, skip_zero_advantage=False, is_cap=1.5)
    on, s_on = _updated(model, tok, [batch], reuse_logprobs=True, **kw)
    off, s_off = _updated(model, tok, [batch], reuse_logprobs=False, **kw)
    _assert_same_weights(on, off)
    for k in ("is_weight_mean", "is_weight_min", "is_weight_max", "is_clipped_frac"):
        assert s_on[k] == pytest.approx(s_off[k], abs=1e-6), k
    assert s_on["is_weight_max"] > 1.5 > 1.0 > s_on["is_weight_min"] and 0 < s_on["is_clipped_frac"] < 1
    plain, _ = _updated(model, tok, [_batch(tok)], reuse_logprobs=True, **kw)  # no behaviour log-probs
    assert max((p - q).abs().max().item() for p, q in zip(on.parameters(), plain.parameters())) > 1e-6


@pytest.mark.parametrize("epochs,minibatches", [(1, 1), (2, 2)])
def test_importance_weights_are_against_the_policy_before_the_update(tiny, epochs, minibatches):
    """Behaviour log-probs = the start policy's minus log(w) for a weight w per row (below the cap):
    each token's importance weight is then w, so the update must equal the plain update with each
    row's advantage times w -- in every epoch and minibatch, whatever the weights became meanwhile."""
    model, tok = tiny
    batch = _batch(tok)
    w = torch.linspace(0.5, 1.4, batch.adv.numel())
    prox = T.chunked_logprobs(model, batch, 16, "fp32")
    lagging = T.RLBatch(batch.ids, batch.attn, batch.comp, batch.adv,
                        behaviour_logp=(prox - torch.log(w)[:, None]) * batch.comp)
    scaled = T.RLBatch(batch.ids, batch.attn, batch.comp, batch.adv * w)
    kw = dict(epochs=epochs, minibatches=minibatches, is_cap=1.5)
    got, stats = _updated(model, tok, [lagging], **kw)
    want, _ = _updated(model, tok, [scaled], **kw)
    # w goes through log and exp, and the proximal pass here through other chunks: fp32 rounding,
    # which AdamW lifts to ~1e-6 (a proximal policy one epoch late moves weights by > 1e-4)
    assert max((p - q).abs().max().item() for p, q in zip(got.parameters(), want.parameters())) < 1e-5
    assert stats["is_clipped_frac"] == 0 and 0.5 - 1e-5 < stats["is_weight_min"] < stats["is_weight_max"] < 1.4 + 1e-5
