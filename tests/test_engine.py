"""Engine invariants: determinism, prefix sharing equals one-by-one sampling, limits,
and the step-wise API (joining mid-way, dropping rows)."""

import pytest
import torch

from ponder.models.decoder import supports
from ponder.engine.engine import Engine, SamplingParams, pick_tokens, row_seed

PROMPTS = ["12+34=?\n", "5*7=?\n", "98765+12345=?\n"]


def test_same_seed_same_tokens_and_different_seed_differs(tiny):
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=16, temperature=1.0)
    a = e.generate(PROMPTS, n=3, params=sp, seed=5)
    b = e.generate(PROMPTS, n=3, params=sp, seed=5)
    c = e.generate(PROMPTS, n=3, params=sp, seed=6)
    ids = lambda r: [s.ids for g in r for s in g]
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_prefix_shared_batch_equals_naive_one_by_one(tiny):
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9)
    batched = e.generate(PROMPTS, n=4, params=sp, seed=11)
    for i, p in enumerate(PROMPTS):
        for j in range(4):
            (one,) = e.generate_ids([e.encode(p)], 1, sp, [[row_seed(11, i, j)]], [20])
            assert one.ids == batched[i][j].ids, (i, j)


def test_fast_decoder_matches_hf_forward(tiny):
    model, tok = tiny
    assert supports(model)
    sp = SamplingParams(max_new_tokens=24, temperature=1.0)
    fast = Engine(model, tok, fast=True).generate(PROMPTS, n=3, params=sp, seed=3)
    slow = Engine(model, tok, fast=False).generate(PROMPTS, n=3, params=sp, seed=3)
    assert [s.ids for g in fast for s in g] == [s.ids for g in slow for s in g]


def test_greedy_is_argmax_and_max_tokens_respected(tiny):
    model, tok = tiny
    e = Engine(model, tok)
    out = e.generate(PROMPTS, n=2, params=SamplingParams(max_new_tokens=7, temperature=0.0), seed=0,
                     max_tokens=[3, 7, 5])
    for g, lim in zip(out, [3, 7, 5]):
        assert g[0].ids == g[1].ids  # greedy: samples of a group agree
        for s in g:
            assert len(s.ids) <= lim
            assert s.finish in ("eos", "length") and (s.finish == "eos" or len(s.ids) == lim)


def test_stop_strings_end_the_completion_at_the_first_match(tiny):
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=40)
    free = e.generate(PROMPTS, n=4, params=sp, seed=1)
    stop = free[0][0].text[6:8]  # a string this sample is known to produce
    assert len(stop) == 2 and free[0][0].finish == "length"
    out = e.generate(PROMPTS, n=4, params=SamplingParams(max_new_tokens=40, stop=(stop,)), seed=1)
    s = out[0][0]
    assert s.finish == "stop" and s.text == free[0][0].text[:free[0][0].text.index(stop) + len(stop)]
    for g, fg in zip(out, free):
        for s, f in zip(g, fg):  # every sample: cut at its first match, or unchanged
            if stop in f.text:
                assert s.finish == "stop" and s.text.endswith(stop) and s.text.count(stop) == 1
            else:
                assert s.ids == f.ids


def test_pick_tokens_inverse_cdf():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    for u, want in [(0.1, 0), (0.25, 1), (0.49, 1), (0.51, 2), (0.99, 2)]:
        assert pick_tokens(logits, torch.tensor([u]), 1.0, 1.0).item() == want
    # top_p = 0.5 keeps only the top token (0.5), whatever u is
    assert pick_tokens(logits, torch.tensor([0.01]), 1.0, 0.5).item() == 2


def test_thinking_and_answer_token_counts(tiny):
    model, tok = tiny
    e = Engine(model, tok)
    ids = tok("<think>1+2=3</think>3", add_special_tokens=False)["input_ids"]
    assert e.count_sections(ids, "<think>1+2=3</think>3") == (5, 1)
    assert e.count_sections(tok("42", add_special_tokens=False)["input_ids"], "42") == (0, 2)


def test_tokenizer_round_trips_any_printable_text_including_blank_lines(tiny):
    _, tok = tiny
    text = "12+34=?\n<think>a\n\n  b\tc</think>46\n\n"
    text = text.replace("\t", " ")  # tabs are not in the tiny vocabulary
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) == len(text) - len("<think>") - len("</think>") + 2


def _alone(e, prompt, params, seeds, limit):
    b = e.batch()
    b.add(e.encode(prompt), params, seeds, limit)
    while b.running:
        b.step()
    return sorted((s.sample_index, s.ids) for s in b.take_finished())


def _run(batch, until=None):
    """Step until `until` steps were taken (or nothing runs); samples by request id."""
    done, k = {}, 0
    while batch.running and (until is None or k < until):
        batch.step()
        k += 1
        for s in batch.take_finished():
            done.setdefault(s.prompt_index, []).append((s.sample_index, s.ids))
    return {rid: sorted(v) for rid, v in done.items()}


@pytest.mark.parametrize("fast", [True, False])
def test_request_joining_a_running_batch_gets_the_tokens_it_gets_alone(tiny, fast):
    model, tok = tiny
    e = Engine(model, tok, fast=fast)
    a = SamplingParams(max_new_tokens=30, temperature=1.0)
    b = SamplingParams(max_new_tokens=25, temperature=0.8, top_p=0.9, thinking_budget=6, answer_reserve=3)
    first, longer = "98765+12345+11111=?\n", "98765+12345+11111+2222=?\n"
    batch = e.batch()
    reqs = {}  # rid -> (prompt, params, seeds, limit)

    def add(prompt, params, seeds, limit):
        reqs[batch.add(e.encode(prompt), params, seeds, limit)] = (prompt, params, seeds, limit)
    add(first, a, [7, 8], 8)
    got = _run(batch, until=3)
    add(PROMPTS[1], b, [9, 10, 11], 25)  # shorter than the columns written: left-masked; the rows grow
    got.update(_run(batch, until=12))
    assert 0 in got  # the first request has finished: its columns can be trimmed
    # 8 samples: more rows than there is room for, and a prompt longer than the columns in use:
    # the cache is reallocated, trimmed and shifted right
    add(longer, a, list(range(20, 28)), 3)
    got.update(_run(batch, until=4))
    add(PROMPTS[2], a, [13], 10)  # fits: prefilled in place
    got.update(_run(batch, until=2))
    add(PROMPTS[0], b, [14], 60)  # more columns than there are: reallocated, trimmed by the shifted rows
    got.update(_run(batch))
    assert set(got) == set(reqs)
    for rid, (prompt, params, seeds, limit) in reqs.items():
        assert got[rid] == _alone(e, prompt, params, seeds, limit), rid
    assert len({ids for _, ids in got[1]}) > 1  # the samples of a request differ


@pytest.mark.parametrize("trim", [False, True])
def test_columns_stay_bounded_under_continuous_arrivals(tiny, trim):
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=12)
    batch, widths, got = e.batch(max_rows=8, trim=trim), [], {}
    for k in range(200):  # a request joins every step; about 12 run at once, in rows finished ones held
        batch.add(e.encode(PROMPTS[k % 3]), sp, [k])
        batch.step()
        widths.append(batch.col)
        got.update({s.prompt_index: s.ids for s in batch.take_finished()})
    got.update(_run_ids(batch))
    assert max(widths) < 5 * (len(e.encode(PROMPTS[2])) + 12)  # old columns are trimmed, not kept forever
    if trim:  # trimmed whenever finished rows leave: about the live rows' span (prompt + 12 tokens)
        assert sum(widths) / len(widths) < len(e.encode(PROMPTS[2])) + 12 + 8
    for k in range(0, 200, 13):
        assert [got[k]] == [ids for _, ids in _alone(e, PROMPTS[k % 3], sp, [k], 12)], k


def test_a_reallocation_adds_no_rows_past_the_batchs_max_rows(tiny):
    """A join that must widen the cache (a prompt longer than the columns in use) keeps the rows at
    the batch's `max_rows` when the rows fit in it -- not twice the rows in use (a tool rollout
    rejoins every row this way) -- and the tokens are still each request's own."""
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=10)
    batch = e.batch(max_rows=6, trim=True)
    first = batch.add(e.encode(PROMPTS[1]), sp, [1, 2])
    got = _run(batch, until=2)
    longer = PROMPTS[2] * 3  # longer than the columns written so far
    second = batch.add(e.encode(longer), sp, [3, 4, 5])
    got.update(_run(batch, until=1))
    assert batch.backend.buf.valid.size(0) == 6  # 5 rows run; a doubling would make 10
    got.update(_run(batch))
    assert got[first] == _alone(e, PROMPTS[1], sp, [1, 2], 10)
    assert got[second] == _alone(e, longer, sp, [3, 4, 5], 10)


def _run_ids(batch):
    out = {}
    while batch.running:
        batch.step()
        out.update({s.prompt_index: s.ids for s in batch.take_finished()})
    return out


@pytest.mark.parametrize("fast", [True, False])
def test_dropping_a_request_leaves_the_others_unchanged(tiny, fast):
    model, tok = tiny
    e = Engine(model, tok, fast=fast)
    sp = SamplingParams(max_new_tokens=30)
    ref = e.batch()
    ids = [ref.add(e.encode(p), sp, [s, s + 100]) for s, p in enumerate(PROMPTS)]
    want = _run(ref)
    batch = e.batch()
    for s, p in enumerate(PROMPTS):
        batch.add(e.encode(p), sp, [s, s + 100])
    before = _run(batch, until=3)
    batch.drop(ids[1])
    after = _run(batch)
    assert ids[1] not in after and max(len(t) for _, t in want[ids[1]]) > 3  # it was still running
    got = {rid: sorted(before.get(rid, []) + after.get(rid, [])) for rid in ids if rid != ids[1]}
    assert got == {rid: v for rid, v in want.items() if rid != ids[1]}


def test_generate_is_a_loop_over_the_step_api(tiny):
    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=20, top_p=0.95)
    out = e.generate(PROMPTS, n=2, params=sp, seed=4)
    batch = e.batch()
    for i, p in enumerate(PROMPTS):
        batch.add(e.encode(p), sp, [row_seed(4, i, j) for j in range(2)])
    events = []
    while batch.running:
        events += batch.step()
    by_row = {}
    for ev in events:
        by_row.setdefault((ev.rid, ev.j), []).append(ev.token)
    assert by_row == {(i, j): list(out[i][j].ids) for i in range(len(PROMPTS)) for j in range(2)}
    assert e.last_stats.forward_calls == batch.forward_calls == max(len(s.ids) for g in out for s in g)


def test_batch_refuses_empty_requests(tiny):
    from ponder.core.config import ConfigError
    model, tok = tiny
    batch = Engine(model, tok).batch()
    with pytest.raises(ConfigError, match="prompt_ids is empty"):
        batch.add([], SamplingParams(), [0])
    with pytest.raises(ConfigError, match="at least one seed"):
        batch.add([1, 2], SamplingParams(), [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("L", [1, 5])
@pytest.mark.parametrize("n_kv", [1, 3, 9])
def test_decoder_attention_is_grouped_query_attention(dtype, L, n_kv):
    """`attention` (a decode step's query heads laid out per KV head) equals attention with each
    KV head repeated for its query heads (HF's repeat_kv), padding mask included."""
    import torch.nn.functional as F
    from ponder.models.decoder import attention

    g = torch.Generator().manual_seed(0)
    B, H, S, hd = 3, 9, 11, 8
    q = torch.randn(B, H, L, hd, generator=g).to(dtype)
    k, v = (torch.randn(B, n_kv, S, hd, generator=g).to(dtype) for _ in range(2))
    ok = torch.ones(B, S, dtype=torch.bool)
    ok[1, :4] = False  # a left-padded row
    causal = torch.ones(L, S, dtype=torch.bool).tril(diagonal=S - L)
    mask = (ok[:, None, :] & causal[None]).unsqueeze(1)
    rep = H // n_kv
    want = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(rep, 1),
                                          v.float().repeat_interleave(rep, 1), attn_mask=mask)
    got = attention(q, k, v, mask)
    assert got.shape == (B, H, L, hd) and got.dtype == dtype
    assert (got.float() - want).abs().max().item() < (1e-5 if dtype == torch.float32 else 2e-2)


def _decoder_logits(decoder, ids):
    B, L = ids.shape
    cache = decoder.new_cache(B, L + 1)
    pos = torch.arange(L)[None].expand(B, L)
    prefill = decoder.forward(ids[:, :-1], pos[:, :-1], cache, 0)
    step = decoder.forward(ids[:, -1:], pos[:, -1:], cache, L - 1)  # a decode step: one token per row
    return prefill.float(), step.float()


def test_fused_projections_in_bf16_equal_the_separate_ones_and_follow_weight_updates(tiny):
    """A bf16 decoder runs q/k/v and gate/up as one matmul each: the logits of a prefill and a
    decode step equal the separate projections'; after the weights are refreshed in place (the
    rollout copy's refresh, an optimizer step) the fused weights follow, never stale; fp32 and
    LoRA-wrapped projections are not fused."""
    from ponder.engine.engine import rollout_copy
    from ponder.models.decoder import Decoder

    model, _ = tiny
    assert Decoder(model).fused is None  # fp32: the separate projections, bit for bit as before
    copy = rollout_copy(model, "bf16")
    fused = Decoder(copy)
    assert fused.fused is not None
    plain = Decoder(copy)
    plain.fused = None
    ids = torch.randint(3, 40, (4, 9), generator=torch.Generator().manual_seed(1))
    for a, b in zip(_decoder_logits(fused, ids), _decoder_logits(plain, ids)):
        assert (a - b).abs().max().item() < 2e-2

    before = _decoder_logits(fused, ids)[1]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    rollout_copy(model, "bf16", copy)  # refreshed in place, as the RL loop does after each update
    after, want = _decoder_logits(fused, ids)[1], _decoder_logits(plain, ids)[1]
    assert (before - want).abs().max().item() > 0.1  # the update moved the logits
    assert (after - want).abs().max().item() < 2e-2

    from ponder.models import lora
    inner = lora.plain_model(lora.add_lora(rollout_copy(model, "bf16"), 2, 4, "q_proj,v_proj"))
    assert supports(inner) and Decoder(inner).fused is None


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_engine_logprobs_equal_a_teacher_forced_pass(tiny, temperature, top_p):
    """With `logprobs`, each sample carries one log-prob per token, the model's log softmax at
    temperature 1 -- what a teacher-forced pass over the same tokens gives -- and the tokens
    are the ones sampled without it."""
    from dataclasses import replace

    model, tok = tiny
    e = Engine(model, tok)
    sp = SamplingParams(max_new_tokens=16, temperature=temperature, top_p=top_p)
    plain = e.generate(PROMPTS, n=3, params=sp, seed=4)
    scored = e.generate(PROMPTS, n=3, params=replace(sp, logprobs=True), seed=4)
    assert [s.ids for g in scored for s in g] == [s.ids for g in plain for s in g]
    assert all(s.logprobs == () for g in plain for s in g)
    for s in (s for g in scored for s in g):  # one teacher-forced pass per sample
        ids = torch.tensor([list(s.prompt_ids) + list(s.ids)])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        want = logp[len(s.prompt_ids) - 1:].gather(1, ids[0, len(s.prompt_ids):, None])[:, 0].tolist()
        assert len(s.logprobs) == len(s.ids) == len(want)
        assert max(abs(a - b) for a, b in zip(s.logprobs, want)) < 1e-4
