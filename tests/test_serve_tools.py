"""`ponder serve --tools`: a request that enables the server's tools gets the completion `ponder eval
--tools` samples (calls run while the other rows keep decoding), through the OpenAI and Anthropic
clients; requests for tools the server does not run are refused, naming the valid ones."""

from __future__ import annotations

import asyncio
import threading

import anthropic
import openai
import pytest

from ponder.engine.engine import Engine, SamplingParams, row_seed
from ponder.rl.tool_rollout import generate_with_tools
from ponder.serve.service import ServeConfig
from ponder.serve.worker import Job, Worker
from ponder.verifiers.tools import Tool, ToolFields, Toolbox, calculate
from serve_fixtures import KEY, RunningServer, base_model

MODEL = "tiny-tools"  # the shipped base that calls the calculator on some samples
Q = "4021753+938211=?"
N, LIMIT, SEED = 16, 64, 7  # at seed 7, 3 of the 16 samples call the calculator


def reference(seeds, question=Q):
    """What the rollouts (and `ponder eval --tools`) sample for `question` from these row seeds."""
    model, tok = base_model(MODEL)
    e = Engine(model, tok)
    box = Toolbox.from_fields(ToolFields(tools="calculator"))
    return generate_with_tools(e, [e.encode(question + "\n")], len(seeds), SamplingParams(max_new_tokens=LIMIT),
                               [seeds], [LIMIT], box)


def collect(job: Job, rows: int, streamed: dict | None = None):
    """The job's samples by index; `streamed` gets the tokens each row was sent, in order."""
    async def run():
        done = {}
        while len(done) < rows:
            kind, payload = await job.queue.get()
            assert kind != "error", payload
            if kind == "done":
                done[payload.sample_index] = payload
            elif kind == "tokens" and streamed is not None:
                for j, token in payload:
                    streamed.setdefault(j, []).append(token)
        return done
    return run()


def test_a_row_paused_for_a_tool_in_the_served_batch_gives_the_rollouts_tokens():
    model, tok = base_model(MODEL)
    e = Engine(model, tok)
    seeds = [row_seed(SEED, 0, j) for j in range(N)]
    ref = reference(seeds)
    assert sum(len(t.calls) for t in ref) >= 2  # the case is a real one: some rows call

    async def main():
        w = Worker(e, 32, toolbox=Toolbox.from_fields(ToolFields(tools="calculator")))
        loop = asyncio.get_running_loop()
        params = SamplingParams(max_new_tokens=LIMIT)
        others = [Job(e.encode(f"{a}+{b}=?\n"), params, [a, b], LIMIT, loop) for a, b in ((12, 5), (333, 41))]
        job = Job(e.encode(Q + "\n"), params, seeds, LIMIT, loop, tools=("calc",))
        for j in (others[0], job, others[1]):  # joins a batch that is already decoding
            w.submit(j)
        try:
            return await collect(job, N, streamed), [await collect(o, 2) for o in others]
        finally:
            w.close()
    streamed = {}
    done, others = asyncio.run(main())
    for j in range(N):
        assert done[j].ids == ref[j].sample.ids and done[j].text == ref[j].sample.text, j
        assert tuple(streamed[j]) == done[j].ids, j  # a stream gets every token, the tools' output too
    assert all(len(o) == 2 for o in others)  # the jobs without tools finished beside it


def test_a_job_dropped_while_its_tool_runs_leaves_the_worker_serving():
    model, tok = base_model(MODEL)
    e = Engine(model, tok)
    started, release = threading.Event(), threading.Event()

    def slow(argument):
        started.set()
        release.wait(10)
        return calculate(argument)
    seeds = [row_seed(SEED, 0, j) for j in range(N)]

    async def main():
        w = Worker(e, 32, toolbox=Toolbox([Tool("calc", slow)], 4))
        loop = asyncio.get_running_loop()
        job = Job(e.encode(Q + "\n"), SamplingParams(max_new_tokens=LIMIT), seeds, LIMIT, loop, tools=("calc",))
        w.submit(job)
        try:
            while not started.is_set():
                await asyncio.sleep(0.01)
            w.cancel(job)
            for _ in range(500):
                if w.stats()["running_requests"] == 0:
                    break
                await asyncio.sleep(0.01)
            stats = w.stats()
            release.set()
            nxt = Job(e.encode("12+5=?\n"), SamplingParams(max_new_tokens=LIMIT), [1], LIMIT, loop)
            w.submit(nxt)
            return stats, await collect(nxt, 1)
        finally:
            release.set()
            w.close()
    stats, after = asyncio.run(main())
    assert stats["running_requests"] == 0 and stats["dropped_requests"] == 1, stats
    assert after[0].text


@pytest.fixture(scope="module")
def server():  # the engine in its own process, as `ponder serve` runs it
    with RunningServer(ServeConfig(model=MODEL, api_key=KEY, tools="calculator")) as s:
        yield s


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def test_openai_tools_calculator_runs_inside_the_reasoning(oai):
    ref = reference([row_seed(SEED, 0, j) for j in range(N)])
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": Q}], n=N, seed=SEED,
                                    max_tokens=LIMIT, tools=[{"type": "calculator"}])
    for c in r.choices:
        think, _, answer = ref[c.index].sample.text.removeprefix("<think>").partition("</think>")
        assert (c.message.reasoning, c.message.content) == (think, answer), c.index
    called = [c for c in r.choices if ref[c.index].calls]
    assert called and all("<calc>" in c.message.reasoning and "<output>" in c.message.reasoning for c in called)
    assert r.usage.completion_tokens == sum(len(t.sample.ids) for t in ref)  # tool output counts as completion

    stream = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": Q}], n=N, seed=SEED,
                                         max_tokens=LIMIT, tools=[{"type": "calculator"}], stream=True)
    reasoning, content = [""] * N, [""] * N
    for chunk in stream:
        for ch in chunk.choices:
            reasoning[ch.index] += getattr(ch.delta, "reasoning", None) or ""
            content[ch.index] += ch.delta.content or ""
    for c in r.choices:
        assert (reasoning[c.index], content[c.index]) == (c.message.reasoning, c.message.content), c.index


def test_anthropic_tools_calculator_in_the_thinking_block(server):
    seed = next(s for s in range(40) if reference([row_seed(s, 0, 0)])[0].calls)  # a seed whose sample calls
    ref = reference([row_seed(seed, 0, 0)])[0]
    claude = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)
    m = claude.messages.create(model=MODEL, max_tokens=LIMIT, messages=[{"role": "user", "content": Q}],
                               tools=[{"type": "calculator", "name": "calculator"}], extra_body={"seed": seed})
    thinking = next(b.thinking for b in m.content if b.type == "thinking")
    assert "<calc>" in thinking and f"<output>{ref.calls[0].output}</output>" in thinking
    assert m.content[-1].text == ref.sample.text.split("</think>")[-1]


@pytest.mark.parametrize("tools, extra, param, words", [
    ([{"type": "function", "function": {"name": "f", "parameters": {}}}], {}, "tools[0].type",
     "function tools (run by the client) are not supported; valid types: calculator"),
    ([{"type": "python"}], {}, "tools[0].type", "tool 'python' is not run by this server; valid types: calculator"),
    ([{"type": "calculator"}], {"reasoning_effort": "low"}, "reasoning_effort", "leave reasoning_effort unset"),
])
def test_tools_the_server_does_not_run_are_refused_naming_the_valid_ones(oai, tools, extra, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": Q}], tools=tools, **extra)
    err = e.value.body
    assert err["param"] == param and words in err["message"], err


def test_anthropic_client_tools_and_budgets_are_refused(server):
    claude = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)
    msg = [{"role": "user", "content": Q}]
    with pytest.raises(anthropic.BadRequestError, match="function tools"):
        claude.messages.create(model=MODEL, max_tokens=LIMIT, messages=msg,
                               tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    with pytest.raises(anthropic.BadRequestError, match="leave thinking out"):
        claude.messages.create(model=MODEL, max_tokens=LIMIT, messages=msg, tools=[{"type": "calculator"}],
                               thinking={"type": "enabled", "budget_tokens": 32})


def test_a_server_without_tools_refuses_a_request_for_one():
    with RunningServer(ServeConfig(api_key=KEY, engine="thread")) as s:
        oai = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="start the server with --tools"):
            oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "1+1=?"}],
                                        tools=[{"type": "calculator"}])
