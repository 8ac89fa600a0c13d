"""`share_prompt`: the update runs each group's prompt once for all its rows, and the update is
the same as with every row run whole (weights <= 1e-6)."""

import copy

import pytest
import torch

from ponder.engine.engine import Sample
from ponder.models.lora import trainable_parameters
from ponder.rl import train as T
from ponder.rl.grpo import AGGREGATIONS, grpo_advantages
from ponder.rl.shared_prompt import group_chunks, shares_prompt

# 3 groups of 4: informative, informative with one invalid verdict (NaN), all equal (skipped or not)
REWARDS = [[1.0, 0.0, 0.5, 0.0], [1.0, float("nan"), 0.0, 0.25], [1.0, 1.0, 1.0, 1.0]]


def _batch(tok, seed=0) -> T.RLBatch:
    """Rows of one group share one prompt (of its own length); completions of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    r = torch.tensor(REWARDS)
    P, G = r.shape
    samples = []
    for p in range(P):
        prompt = tuple(torch.randint(3, len(tok), (5 + 4 * p,), generator=g).tolist())
        for k in range(G):
            ids = tuple(torch.randint(3, len(tok), (2 + (5 * k + p) % 7,), generator=g).tolist())
            samples.append(Sample(p, k, prompt, ids, "", "length", 0, len(ids)))
    ids, attn, comp = T.pack(samples, tok.pad_token_id)
    comp[torch.isnan(r.reshape(-1))] = 0.0
    groups = torch.arange(P).repeat_interleave(G)
    return T.RLBatch(ids, attn, comp, grpo_advantages(r).reshape(-1), groups=groups,
                     prompt_lens=torch.tensor([len(s.prompt_ids) for s in samples]))


def _updated(model, batch, bonus=0.0, **kw):
    """A copy of `model` after two updates, and the last one's stats.

    Plain SGD: the two paths agree to fp32 rounding (~1e-7 of the gradient, summed in another
    order), which AdamW's g / |g| would lift to a share of lr in components whose gradient is ~0;
    with SGD a wrong gradient still moves the weights by ~lr x |g|."""
    model = copy.deepcopy(model).train()
    cfg = T.RLConfig(group_size=4, prompts_per_step=3, micro_batch=3, **kw)
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.5)
    stats = [T.update_policy(model, None, opt, batch, cfg, AGGREGATIONS[cfg.loss_agg], entropy_coef=bonus)
             for _ in range(2)]
    return model, stats[-1]


def _max_diff(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def test_the_prompt_run_once_gives_the_same_logprobs_and_entropy(tiny):
    model, tok = tiny
    batch = _batch(tok)
    rows = torch.arange(4, 8)  # group 1, its invalid row included
    ids, attn, comp = T.trimmed(batch, rows)
    P = int(batch.prompt_lens[4])
    whole = T.completion_logprobs(model, ids, attn, comp)
    shared = T.completion_logprobs(model, ids, attn, comp, prompt_len=P)
    for a, b in zip(whole[:2], shared[:2]):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-5
    assert (shared[0] != 0).sum() == comp.sum()  # every completion token, nothing else


@pytest.mark.parametrize("loss_agg", ["token", "sequence"])
@pytest.mark.parametrize("kw", [dict(), dict(skip_zero_advantage=False), dict(epochs=2, minibatches=3),
                                dict(bonus=0.01)])
def test_sharing_the_prompt_leaves_the_update_unchanged(tiny, loss_agg, kw):
    model, tok = tiny
    batch = _batch(tok)
    on, s_on = _updated(model, batch, share_prompt=True, loss_agg=loss_agg, **kw)
    off, s_off = _updated(model, batch, share_prompt=False, loss_agg=loss_agg, **kw)
    assert _max_diff(on, off) <= 1e-6
    assert _max_diff(on, model) > 1e-5  # the update did move the weights
    assert s_on["loss"] == pytest.approx(s_off["loss"], abs=1e-6)
    assert s_on["update_tokens"] < s_off["update_tokens"]  # the prompts ran once per chunk, not once per row


def test_the_chunks_hold_one_group_each_and_keep_the_caps():
    groups = torch.arange(3).repeat_interleave(4)
    prompt_lens = torch.tensor([10] * 4 + [20] * 4 + [5] * 4)
    lengths = prompt_lens + torch.tensor([3, 9, 1, 4, 2, 2, 8, 6, 7, 1, 1, 3])
    rows = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11])  # row 8 skipped
    chunks = group_chunks(rows, groups, prompt_lens, lengths, micro_batch=3, max_tokens=30)
    got = torch.cat([c for c, _ in chunks]).sort().values
    assert got.equal(rows)  # every row once
    for c, P in chunks:
        assert len(set(groups[c].tolist())) == 1 and P == int(prompt_lens[c[0]])
        assert len(c) <= 3
        longest = int(lengths[c].max())
        assert len(c) == 1 or P + len(c) * (longest - P) <= 30  # the prompt counted once
    assert [len(c) for c, _ in chunks if int(groups[c[0]]) == 0] == [3, 1]  # by length; micro_batch binds


def test_rows_that_do_not_share_their_prompt_run_whole(tiny):
    model, tok = tiny
    batch = _batch(tok)
    ids = batch.ids.clone()
    ids[5, 0] = (ids[5, 0] + 1) % len(tok)  # one row of group 1 with another prompt
    other = T.RLBatch(ids, batch.attn, batch.comp, batch.adv, groups=batch.groups, prompt_lens=batch.prompt_lens)
    assert not shares_prompt(ids[4:8], batch.comp[4:8], int(batch.prompt_lens[4]))
    assert shares_prompt(ids[0:4], batch.comp[0:4], int(batch.prompt_lens[0]))
    cfg_chunks = T.update_chunks(model, other, torch.arange(12), 0, 0, share=True)
    assert {int(other.groups[c[0]]): P for c, P in cfg_chunks} == {0: 5, 1: 0, 2: 13}
