"""`ponder serve` through the official openai and anthropic clients, against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time

import anthropic
try:  # the HTTP client the openai and anthropic clients are built on (httpx2 in newer ones)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx
import openai
import pytest

from ponder.engine.engine import Engine, SamplingParams
from ponder.serve.reasoning import sampling_params, split_completion
from ponder.serve.service import ServeConfig
from ponder.serve.worker import Job, Worker
from serve_fixtures import KEY, RunningServer, base_model

Q = "12345+67890=?"  # the built-in base thinks on some samples of this one (seed 0: 3 of 8)


@pytest.fixture(scope="module")
def server():  # the engine in its own process, as `ponder serve` runs it
    with RunningServer(ServeConfig(api_key=KEY, max_batch=64)) as s:
        yield s


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def ask(oai, content=Q, **kw):
    if "thinking_budget" in kw:  # ponder's own field: the client sends it as an extra
        kw["extra_body"] = {**kw.get("extra_body", {}), "thinking_budget": kw.pop("thinking_budget")}
    return oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def n_tokens(text: str | None) -> int:
    _, tok = base_model()
    return len(tok(text or "", add_special_tokens=False)["input_ids"])


def test_plain_completion_splits_thinking_from_answer_and_counts_tokens(oai):
    r = ask(oai, n=8, seed=0, reasoning_effort="high")
    assert len(r.choices) == 8 and [c.index for c in r.choices] == list(range(8))
    thought = [c for c in r.choices if c.message.reasoning]
    assert thought, "seed 0 gives some samples that think"
    for c in r.choices:
        assert c.message.content and "<think>" not in c.message.content and "</think>" not in c.message.content
        assert c.message.reasoning == c.message.reasoning_content
    reasoning = sum(n_tokens(c.message.reasoning) for c in r.choices)
    assert r.usage.completion_tokens_details.reasoning_tokens == reasoning > 0
    assert r.usage.prompt_tokens == n_tokens(Q + "\n") + 1  # + BOS
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_user_message_is_asked_as_the_task_asks_it(oai):
    """No chat template: `3779+1029=?` is the arithmetic task's prompt `3779+1029=?\\n`, token for token."""
    from ponder.tasks import get_task
    ex = next(e for e in get_task("arithmetic").examples("test", 50, seed=0))
    model, tok = base_model()
    params = sampling_params(64, 128, 0.0, 1.0, (), "max_tokens")
    (want,), = Engine(model, tok).generate([ex.prompt], 1, params, seed=0)
    r = ask(oai, ex.prompt.strip(), temperature=0.0, reasoning_effort="medium", max_tokens=128)
    assert r.usage.prompt_tokens == len(tok(ex.prompt)["input_ids"])
    assert r.choices[0].message.content == split_completion(want.text, False, True).answer
    assert r.usage.completion_tokens == len(want.ids)


@pytest.mark.parametrize("effort,cap", [("none", 0), ("minimal", 4), ("low", 16), ("medium", 64), ("high", None)])
def test_effort_levels_cap_the_thinking(oai, effort, cap):
    r = ask(oai, n=8, seed=0, reasoning_effort=effort)
    per_choice = [n_tokens(c.message.reasoning) for c in r.choices]
    assert sum(per_choice) == r.usage.completion_tokens_details.reasoning_tokens
    assert all(c.message.content for c in r.choices)
    if cap is not None:
        assert max(per_choice) <= cap
    if effort == "none":
        assert r.usage.completion_tokens_details.reasoning_tokens == 0
        assert all(c.message.reasoning == "" for c in r.choices)
    if effort == "low":
        assert max(per_choice) == cap  # a sample that thinks longer is cut at the cap


@pytest.mark.parametrize("budget", [0, 1, 8, -1])
def test_thinking_budget_field(oai, budget):
    r = ask(oai, n=8, seed=0, thinking_budget=budget, reasoning_effort="none")  # the budget wins
    per_choice = [n_tokens(c.message.reasoning) for c in r.choices]
    assert all(c.message.content for c in r.choices)
    if budget >= 0:
        assert max(per_choice) <= budget
    if budget == 0:
        assert r.usage.completion_tokens_details.reasoning_tokens == 0
    else:
        assert r.usage.completion_tokens_details.reasoning_tokens > 0


@pytest.mark.parametrize("limit", [3, 6, 12])
def test_a_small_token_limit_still_leaves_an_answer(oai, limit):
    for field in ("max_completion_tokens", "max_tokens"):
        r = ask(oai, n=8, seed=0, reasoning_effort="high", **{field: limit})
        assert all(c.message.content for c in r.choices), [c.message for c in r.choices]
        assert r.usage.completion_tokens <= 8 * limit
        assert max(n_tokens(c.message.reasoning) for c in r.choices) <= limit - 3


def test_same_seed_same_tokens_alone_or_batched(oai):
    alone = ask(oai, seed=7, n=2, reasoning_effort="high")
    out, errors = {}, []

    def call(k):
        try:
            out[k] = ask(oai, seed=7 if k == 0 else 100 + k, n=2, reasoning_effort="high",
                         content=Q if k == 0 else f"{k}+{k}=?")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=call, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pick = lambda r: [(c.message.reasoning, c.message.content) for c in r.choices]
    assert pick(out[0]) == pick(alone)
    assert pick(ask(oai, seed=8, n=2, reasoning_effort="high")) != pick(alone)


def test_stop_strings_cut_the_answer_and_are_not_returned(oai):
    free = ask(oai, "123+456=?", seed=3, reasoning_effort="none", temperature=0.0)
    answer = free.choices[0].message.content
    assert len(answer) >= 2
    r = ask(oai, "123+456=?", seed=3, reasoning_effort="none", temperature=0.0, stop=[answer[1]])
    assert r.choices[0].message.content == answer[:1] and r.choices[0].finish_reason == "stop"


def test_streaming_sends_reasoning_then_content_then_usage(oai, server):
    plain = ask(oai, n=8, seed=0, reasoning_effort="high")
    stream = ask(oai, n=8, seed=0, reasoning_effort="high", stream=True, stream_options={"include_usage": True})
    reasoning, content, order, usage, finish = [""] * 8, [""] * 8, [[] for _ in range(8)], None, {}
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            d = c.delta
            if getattr(d, "reasoning", None):
                reasoning[c.index] += d.reasoning
                order[c.index].append("r")
            if d.content:
                content[c.index] += d.content
                order[c.index].append("c")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert reasoning == [c.message.reasoning for c in plain.choices]
    assert content == [c.message.content for c in plain.choices]
    assert all("".join(o) == "".join(sorted(o, key="rc".index)) for o in order)  # no reasoning after content
    assert any("r" in o for o in order) and all("c" in o for o in order)
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.completion_tokens_details.reasoning_tokens == plain.usage.completion_tokens_details.reasoning_tokens
    assert set(finish) == set(range(8))
    raw = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "tiny", "messages": [{"role": "user", "content": Q}], "stream": True})
    lines = [x for x in raw.text.split("\n\n") if x.strip()]
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)


def test_hidden_reasoning_per_request_is_counted_not_returned(oai):
    shown = ask(oai, n=8, seed=0, reasoning_effort="high")
    hidden = ask(oai, n=8, seed=0, reasoning_effort="high", extra_body={"include_reasoning": False})
    assert all(c.message.reasoning is None for c in hidden.choices)
    assert [c.message.content for c in hidden.choices] == [c.message.content for c in shown.choices]
    assert hidden.usage.completion_tokens_details.reasoning_tokens == \
        shown.usage.completion_tokens_details.reasoning_tokens > 0
    stream = ask(oai, n=8, seed=0, reasoning_effort="high", stream=True, extra_body={"include_reasoning": False})
    assert not any(getattr(c.delta, "reasoning", None) for chunk in stream for c in chunk.choices)


@pytest.mark.parametrize("mode", ["hidden", "summary"])
def test_server_wide_reasoning_modes(mode):
    with RunningServer(ServeConfig(api_key=KEY, reasoning=mode, engine="thread")) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0)
        r = ask(c, n=8, seed=0, reasoning_effort="high")
        tokens = r.usage.completion_tokens_details.reasoning_tokens
        assert tokens > 0 and all(ch.message.content for ch in r.choices)
        if mode == "hidden":
            assert all(ch.message.reasoning is None for ch in r.choices)
        else:
            summaries = [ch.message.reasoning for ch in r.choices]
            assert all(x.startswith("Thought for ") for x in summaries)
            assert any("steps. First: " in x or "1 step: " in x for x in summaries)
            streamed = ask(c, n=8, seed=0, reasoning_effort="high", stream=True)
            got = [""] * 8
            for chunk in streamed:
                for ch in chunk.choices:
                    got[ch.index] += getattr(ch.delta, "reasoning", None) or ""
            assert got == summaries


def test_models_route(oai):
    assert [m.id for m in oai.models.list()] == ["tiny"]


# -- Anthropic -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


def test_anthropic_thinking_blocks_come_before_text(claude):
    thought = 0
    for seed_prompt in ("12345+67890=?", "987+456=?", "58*7=?", "3779+1029=?"):
        m = claude.messages.create(model="tiny", max_tokens=64, messages=[{"role": "user", "content": seed_prompt}],
                                   thinking={"type": "enabled", "budget_tokens": 8})
        kinds = [b.type for b in m.content]
        assert kinds in (["text"], ["thinking", "text"]) and m.content[-1].text
        reasoning = m.usage.output_tokens_details.thinking_tokens
        assert reasoning <= 8
        if kinds[0] == "thinking":
            thought += 1
            assert n_tokens(m.content[0].thinking) == reasoning
        assert m.stop_reason == "end_turn" and m.usage.input_tokens > 0 and m.usage.output_tokens > reasoning
    off = claude.messages.create(model="tiny", max_tokens=64, messages=[{"role": "user", "content": Q}],
                                 thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"] and off.usage.output_tokens_details.thinking_tokens == 0


def test_anthropic_stream_events(claude, server):
    body = {"model": "tiny", "max_tokens": 64, "stream": True, "thinking": {"type": "enabled", "budget_tokens": 32},
            "messages": [{"role": "user", "content": Q}]}
    seen_thinking = False
    for seed in range(32):  # until a sample thinks (about one in three does on Q)
        with claude.messages.stream(**{k: v for k, v in body.items() if k != "stream"},
                                    extra_body={"seed": seed}) as stream:
            events = [e.type for e in stream if e.type in (
                "message_start", "content_block_start", "content_block_stop", "message_delta", "message_stop")]
            final = stream.get_final_message()
        assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
        assert final.content[-1].type == "text" and final.content[-1].text
        if final.content[0].type == "thinking":
            seen_thinking = True
            assert events[1:-2] == ["content_block_start", "content_block_stop"] * 2
            break
    assert seen_thinking
    raw = httpx.post(server.url + "/v1/messages", headers={"x-api-key": KEY}, json={**body, "seed": seed}).text
    kinds = [json.loads(x.split("data: ", 1)[1])["type"] for x in raw.split("\n\n") if x.strip()]
    deltas = [json.loads(x.split("data: ", 1)[1]).get("delta", {}).get("type") for x in raw.split("\n\n") if x.strip()]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text_at = deltas.index("text_delta")
    assert "thinking_delta" not in deltas[text_at:]


# -- bad requests and limits ------------------------------------------------------------

BAD = [
    ({"model": "gpt-9"}, "model", "valid models: tiny"),
    ({"n": "2"}, "n", "valid integer"),
    ({"temperature": 5}, "temperature", "less than or equal to 2"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort", "'none', 'minimal', 'low', 'medium' or 'high'"),
    ({"thinking_budget": -2}, "thinking_budget", "greater than or equal to -1"),
    ({"max_tokens": 100000}, "max_tokens", "valid values: 1.."),
    ({"max_completion_tokens": 2}, "max_completion_tokens", "valid values: >= 3"),
    ({"n": 17}, "n", "less than or equal to 16"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "'system'"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
]


@pytest.mark.parametrize("patch,field,valid", BAD)
def test_bad_openai_requests_get_400_naming_the_field(server, patch, field, valid):
    body = {"model": "tiny", "messages": [{"role": "user", "content": Q}], **patch}
    r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert field in err["message"] and valid in err["message"], err


def test_malformed_oversized_and_unauthorized_requests(server):
    url, auth = server.url + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url, headers={**auth, "content-type": "application/json"}, content=b'{"model": "tiny",')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 2_000_000}]})
    r = httpx.post(url, headers={**auth, "content-type": "application/json"}, content=big)
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "tiny", "messages": [{"role": "user", "content": Q}]})
    assert r.status_code == 401
    r = httpx.post(url, headers={"Authorization": "Bearer wrong"}, json={})
    assert r.status_code == 401
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"x-api-key": KEY}).status_code == 200
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = httpx.post(server.url + "/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "tiny", "max_tokens": 16, "messages": [{"role": "user", "content": Q}],
                         "thinking": {"type": "sometimes"}})
    assert r.status_code == 400 and r.json()["type"] == "error" and "thinking" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "tiny", "messages": [{"role": "user", "content": Q}]})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/nope", headers={"x-api-key": KEY}).status_code == 404


def test_a_job_cancelled_before_it_joins_the_batch_is_dropped_not_run():
    """The worker takes the job from its inbox and sees its cancel in the same turn (the client hung
    up before the job was admitted): the job is dropped, never decoded."""
    model, tok = base_model()
    e = Engine(model, tok)

    async def main():
        w = Worker(e, 8)
        job = Job(e.encode(Q), SamplingParams(max_new_tokens=50), [1, 2], 50, asyncio.get_running_loop())
        try:
            with w._cv:  # the worker thread wakes to both at once
                w.submit(job)
                w.cancel(job)
            for _ in range(500):
                stats = w.stats()
                if stats["dropped_requests"] or (stats["running_requests"] == stats["queued_requests"] == 0
                                                 and stats["steps"]):
                    break
                await asyncio.sleep(0.01)
            return w.stats()
        finally:
            w.close()
    stats = asyncio.run(main())
    assert stats["dropped_requests"] == 1 and stats["steps"] == 0 and stats["running_requests"] == 0, stats


@pytest.mark.parametrize("engine", ["process", "thread"])
def test_a_full_queue_answers_429_with_retry_after(engine):
    with RunningServer(ServeConfig(max_batch=1, max_queue=1, engine=engine)) as s:
        body = {"model": "tiny", "messages": [{"role": "user", "content": Q}], "max_tokens": 200,
                "thinking_budget": -1, "stream": True}

        async def run():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(6)))
        codes = [r.status_code for r in asyncio.run(run())]
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}, codes
        r = next(r for r in asyncio.run(run()) if r.status_code == 429)
        assert r.headers["retry-after"] == "1" and "busy" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/health").json()["running_requests"] == 0


@contextlib.contextmanager
def engine_held_until_cancel(s: RunningServer):
    """Hold the decode loop from the moment the job runs until the server has cancelled it, so the
    job cannot end on its own first (it takes well under a second unheld: a race the test would lose
    now and then). Thread engine: its batch steps wait. Process engine: the engine process is
    stopped (SIGSTOP) once the job has joined the batch. Either is let go once the cancel is sent,
    or when the block fails (so a server that never cancels fails the test, not hangs it)."""
    worker, cancelled, release = s.service.worker, threading.Event(), threading.Event()
    cancel = worker.cancel

    def cancel_and_tell(job):
        cancel(job)
        cancelled.set()
    worker.cancel = cancel_and_tell

    def stop_once_running():
        for _ in range(3000):
            if worker.stats()["running_requests"]:
                return os.kill(worker._proc.pid, signal.SIGSTOP)
            time.sleep(0.001)
        raise AssertionError(f"the job never joined the batch: {worker.stats()}")
    if s.cfg.engine == "thread":
        step = worker.batch.step
        worker.batch.step = lambda: (release.wait(30), step())[1]
    try:
        yield (lambda: None) if s.cfg.engine == "thread" else stop_once_running
        assert cancelled.wait(30), "the server never cancelled the job"
    finally:
        release.set()
        if s.cfg.engine == "process":
            os.kill(worker._proc.pid, signal.SIGCONT)


def test_leaving_a_stream_before_its_first_batch_drops_the_job():
    """A route's first event (OpenAI's role chunk, Anthropic's message_start) goes out before any
    tokens: a client that hangs up there leaves the `streaming` block before it has read a batch."""
    with RunningServer(ServeConfig(engine="thread")) as s:
        with engine_held_until_cancel(s):
            async def open_and_leave():
                plan = s.service.plan([("user", Q)], None, 200, "max_tokens", 2.0, 1.0, (), 4, 0, None)
                s.service.submit(plan)
                async with s.service.streaming(plan):
                    pass
            asyncio.run(open_and_leave())
        for _ in range(200):
            h = s.service.worker.stats()
            if h["running_requests"] == h["queued_requests"] == 0:
                break
            time.sleep(0.02)
        assert h["dropped_requests"] == 1 and h["running_requests"] == 0, h


@pytest.mark.parametrize("engine", ["process", "thread"])
def test_a_client_that_goes_away_has_its_rows_dropped(engine):
    with RunningServer(ServeConfig(max_tokens=200, engine=engine)) as s:
        # temperature 2: near-uniform sampling, so the 8 rows run for long (EOS is one token in ~100)
        body = {"model": "tiny", "messages": [{"role": "user", "content": Q}], "max_tokens": 200, "seed": 0,
                "thinking_budget": -1, "stream": True, "temperature": 2.0, "n": 8}
        with engine_held_until_cancel(s) as running:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    lines = r.iter_lines()  # kept: a dropped line iterator closes the response
                    next(lines)  # the first chunk, then hang up
                    running()
        for _ in range(200):
            h = httpx.get(s.url + "/health").json()
            if h["running_requests"] == h["queued_requests"] == 0:
                break
            time.sleep(0.02)
        assert h["running_requests"] == 0 and h["dropped_requests"] == 1, dict(h)
        ok = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 20}, timeout=30)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]


def test_64_concurrent_streaming_clients_all_succeed(server):
    async def one(client, k):
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"{k}+{2 * k}=?"}], stream=True, seed=k,
            max_tokens=48, reasoning_effort="low", stream_options={"include_usage": True})
        content, usage = "", None
        async for chunk in stream:
            usage = chunk.usage or usage
            content += "".join(c.delta.content or "" for c in chunk.choices)
        return content, usage

    async def run():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        return await asyncio.gather(*(one(client, k) for k in range(64)), return_exceptions=True)
    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(content and usage.completion_tokens_details.reasoning_tokens <= 16 for content, usage in results)
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["running_requests"] == 0 and h["queued_requests"] == 0
    assert ask(openai.OpenAI(base_url=server.url + "/v1", api_key=KEY), max_tokens=16).choices[0].message.content


def test_an_engine_process_that_dies_fails_requests_not_the_server():
    with RunningServer(ServeConfig(max_tokens=200)) as s:
        body = {"model": "tiny", "messages": [{"role": "user", "content": Q}], "max_tokens": 200,
                "thinking_budget": -1, "stream": True, "temperature": 2.0, "n": 8}
        with httpx.Client(base_url=s.url, timeout=30) as c:
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = r.iter_lines()
                next(lines)
                s.service.worker._proc.kill()  # the engine process dies mid-stream
                rest = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert "engine process exited" in rest[-1]["error"]["message"]
        h = httpx.get(s.url + "/health")
        assert h.status_code == 503 and h.json()["status"] == "unavailable", h.json()
        r = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=30)
        assert r.status_code == 503 and "engine process exited" in r.json()["error"]["message"]


def test_sampling_params_keep_room_for_the_answer():
    p = sampling_params(100, 12, 1.0, 1.0, (), "max_tokens")
    assert p.thinking_budget == 12 - 3 - 2 and p.answer_reserve == 3  # clipped to what fits
    assert sampling_params(None, 12, 1.0, 1.0, (), "max_tokens").thinking_budget is None
    assert isinstance(p, SamplingParams)


def test_stream_split_never_takes_back_what_it_sent():
    """Text tags and stop strings arrive in pieces: nothing that may turn out to be one is sent early."""
    from ponder.serve.reasoning import StreamSplit
    text = "<think>a</thi b</think>\n\n42 ST"
    for stops, want in (((), ("a</thi b", "42 ST")), (("ST",), ("a</thi b", "42 "))):
        split, sent_r, sent_c = StreamSplit(False, stops), "", ""
        for k in range(1, len(text) + 1):
            final = k == len(text)
            dr, dc = split.feed(text[:k], final=final, stopped=final and bool(stops))
            sent_r, sent_c = sent_r + dr, sent_c + dc
            assert (sent_r, sent_c) == (split.thinking, split.answer)  # each delta extends what was sent
            pending = ("</think>",) + stops  # what sent text must not end with a piece of, until it is decided
            assert final or not any(x.endswith(p[:j]) for x in (sent_r, sent_c) for p in pending
                                    for j in range(1, len(p)))
        assert (sent_r, sent_c) == want
    opened = StreamSplit(True, ())  # the prompt opened <think>: the completion starts inside it
    assert opened.feed("x</think>y", final=True) == ("x", "y")
    assert split_completion("no thinking here", False, True).answer == "no thinking here"
    assert split_completion("<think>t</think>   ", False, True).answer == "   "  # never empty if it was not


def test_a_waiting_non_streaming_request_is_dropped_when_its_client_leaves(monkeypatch):
    import ponder.serve.service as service_mod
    monkeypatch.setattr(service_mod, "DISCONNECT_POLL_S", 0.005)
    with RunningServer(ServeConfig(engine="thread")) as s:
        svc = s.service

        async def run():
            plan = svc.plan([("user", Q)], -1, 200, "max_tokens", 2.0, 1.0, (), 8, 0, None)
            svc.submit(plan)

            async def gone():
                return True
            return await svc.results(plan, gone)
        assert asyncio.run(run()) == []
        for _ in range(250):
            if svc.worker.stats()["dropped_requests"] == 1:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert svc.worker.stats() | {"steps": 0} == {"running_requests": 0, "queued_requests": 0, "steps": 0,
                                                     "dropped_requests": 1}



@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_stream_whose_client_leaves_before_the_body_starts_drops_its_job(spec):
    """Starlette never starts the body when the client is gone before the response's first send
    (ASGI 2.3: a disconnect cancels the response; 2.4: the send fails). The generator never runs,
    so only the response itself can drop the job (`JobStream`)."""
    from ponder.serve.sse import JobStream
    with RunningServer(ServeConfig(engine="thread")) as s:
        svc, started = s.service, []

        async def events():
            started.append(True)
            yield "data: {}\n\n"

        async def run():
            plan = svc.plan([("user", Q)], -1, 200, "max_tokens", 2.0, 1.0, (), 2, 0, None)
            svc.submit(plan)

            async def receive():
                return {"type": "http.disconnect"}

            async def send(message):
                if spec == "2.4":
                    raise OSError("the client is gone")
                await asyncio.Event().wait()  # never sent: the disconnect cancels the response first
            with contextlib.suppress(Exception):
                await JobStream(events(), svc.dropper(plan))({"type": "http", "asgi": {"spec_version": spec}},
                                                              receive, send)
        asyncio.run(run())
        for _ in range(250):
            if svc.worker.stats()["dropped_requests"] == 1:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert not started
        assert svc.worker.stats() | {"steps": 0} == {"running_requests": 0, "queued_requests": 0, "steps": 0,
                                                     "dropped_requests": 1}

# -- Gemini ------------------------------------------------------------------------------

def gemini(server, body, stream=False, model="tiny"):
    verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return httpx.post(f"{server.url}/v1beta/models/{model}:{verb}", headers={"x-goog-api-key": KEY}, json=body,
                      timeout=60)


def test_gemini_generate_content_thoughts_budget_and_stream(server):
    body = {"contents": [{"role": "user", "parts": [{"text": Q}]}],
            "generationConfig": {"candidateCount": 8, "seed": 0, "maxOutputTokens": 96,
                                 "thinkingConfig": {"thinkingBudget": 8, "includeThoughts": True}}}
    r = gemini(server, body).json()
    cands, usage = r["candidates"], r["usageMetadata"]
    thoughts = [c["content"]["parts"][0]["text"] for c in cands if c["content"]["parts"][0].get("thought")]
    assert len(cands) == 8 and thoughts and all(c["content"]["parts"][-1]["text"] for c in cands)
    assert max(n_tokens(t) for t in thoughts) <= 8 and usage["thoughtsTokenCount"] == sum(map(n_tokens, thoughts))
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"] + \
        usage["thoughtsTokenCount"]
    hidden = gemini(server, {**body, "generationConfig": {**body["generationConfig"], "thinkingConfig": {
        "thinkingBudget": 8}}}).json()  # includeThoughts defaults to false: counted, not returned
    assert not any(p.get("thought") for c in hidden["candidates"] for p in c["content"]["parts"])
    assert hidden["usageMetadata"]["thoughtsTokenCount"] == usage["thoughtsTokenCount"]
    off = gemini(server, {**body, "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}).json()
    assert off["usageMetadata"]["thoughtsTokenCount"] == 0
    events = [json.loads(x[6:]) for x in gemini(server, body, stream=True).text.split("\n\n") if x.strip()]
    got = {}
    for e in events:
        for c in e["candidates"]:
            for p in c["content"]["parts"]:
                kind = "thought" if p.get("thought") else "text"
                got.setdefault(c["index"], {}).setdefault(kind, "")
                assert not (kind == "thought" and "text" in got[c["index"]])  # thoughts come first
                got[c["index"]][kind] += p["text"]
    assert events[-1]["usageMetadata"] == usage
    assert [got[j].get("text") for j in range(8)] == [c["content"]["parts"][-1]["text"] for c in cands]


def test_gemini_bad_requests(server):
    r = gemini(server, {"contents": [{"parts": [{"text": Q}]}]}, model="gemini-9")
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "valid models: tiny" in r.json()["error"]["message"]
    r = gemini(server, {"contents": [{"parts": [{"text": Q}]}],
                        "generationConfig": {"thinkingConfig": {"thinkingBudget": -5}}})
    assert r.status_code == 400 and "thinkingBudget" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1beta/models/tiny:generateContent", json={"contents": []})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"


# -- strategies --------------------------------------------------------------------------

def test_vote_and_adaptive_strategies_use_the_requests_own_samples(oai, server):
    from ponder.core.stats import majority_vote
    from ponder.inference.strategies import vote_confidence
    pool = ask(oai, "7+8=?", n=16, seed=0, reasoning_effort="low")
    answers = [c.message.content.strip() for c in pool.choices]
    r = ask(oai, "7+8=?", n=8, seed=0, reasoning_effort="low", extra_body={"strategy": "vote"})
    votes = r.model_extra["strategy"]
    assert len(r.choices) == 1 and votes["samples"] == 8 and votes["answer"] == majority_vote(answers[:8])
    assert r.choices[0].message.content.strip() == votes["answer"]
    assert sum(votes["votes"].values()) == sum(1 for a in answers[:8] if a)
    a = ask(oai, "7+8=?", n=16, seed=0, reasoning_effort="low", extra_body={"strategy": "adaptive"})
    k = a.model_extra["strategy"]["samples"]
    assert k % 2 == 0 and (k == 16 or vote_confidence(answers[:k]) >= 0.95)
    assert k == 16 or vote_confidence(answers[:k - 2]) < 0.95  # it stopped at the first confident round
    assert a.model_extra["strategy"]["answer"] == majority_vote(answers[:k])
    first_k = ask(oai, "7+8=?", n=k, seed=0, reasoning_effort="low")
    assert a.usage.completion_tokens == first_k.usage.completion_tokens  # usage counts all k samples
    assert r.usage.completion_tokens == ask(oai, "7+8=?", n=8, seed=0, reasoning_effort="low").usage.completion_tokens
    body = {"model": "tiny", "messages": [{"role": "user", "content": Q}], "strategy": "vote", "stream": True}
    r = httpx.post(server.url + "/v1/chat/completions", headers={"x-api-key": KEY}, json=body)
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", headers={"x-api-key": KEY},
                   json={**body, "stream": False, "strategy": "best_of_n"})
    assert r.status_code == 400 and "'vote' or 'adaptive'" in r.json()["error"]["message"]
