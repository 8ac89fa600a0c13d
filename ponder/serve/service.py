"""What both APIs share: the served model, prompts from messages, limits, jobs and their results.

The HTTP routes (`openai_api`, `anthropic_api`) turn a request body into a
`Plan` here, submit it to the batching `Worker`, and read results back either
whole (`results`) or as deltas (`stream`, `streaming`). Nothing here knows HTTP except the
`RequestError`s it raises, which carry the status and the field to blame.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, replace

from ponder.core.config import DEVICES, ConfigError, check_choices, option
from ponder.engine.engine import Engine, Sample, SamplingParams, row_seed
from ponder.serve.reasoning import REASONING_MODES, RequestError, StreamSplit, sampling_params
from ponder.serve.engine_proc import EngineGone, EngineProcess
from ponder.serve.worker import Busy, Job, Worker
from ponder.core.think import THINK_OPEN
from ponder.verifiers.tools import ToolFields, Toolbox, tool_names

DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks its client is still there
# With many streams open, each stream sends what arrived within COALESCE_S as one chunk
# instead of one chunk per token: a socket send costs more CPU than a decode step's share
# of a token, and the CPU saved goes to decoding (bench/bench_serve.py). A reader cannot
# tell 10 ms apart; with few streams nothing waits.
COALESCE_FROM, COALESCE_S = 8, 0.01


ENGINE_MODES = ("process", "thread")


@dataclass(frozen=True)
class ServeConfig(ToolFields):
    """`ponder serve`'s settings. The tool fields say which tools the server runs for a request that
    enables them (`"tools": [{"type": "calculator"}]`); none by default."""
    model: str = option("tiny", "what `ponder eval --model` takes: tiny, a model folder, smollm2-135m, ...")
    host: str = option("127.0.0.1", "address to listen on (127.0.0.1: this machine only)")
    port: int = option(8000, "TCP port")
    api_key: str = option("", "key every route but /health and / requires (Bearer or x-api-key); "
                              "default: $PONDER_API_KEY, else none")
    max_batch: int = option(64, "most sequences decoded together (continuous batching)")
    max_queue: int = option(256, "most requests waiting for room; beyond it: 429 with Retry-After")
    reasoning: str = option("visible", "thinking in responses: visible, hidden (counted, not returned) "
                                       "or summary", choices=REASONING_MODES)
    max_tokens: int = option(256, "completion limit (thinking + answer) of a request that sets none")
    max_body: int = option(1_000_000, "largest request body in bytes (413 beyond)")
    name: str = option("", "model id the API reports and accepts; default: MODEL as given")
    threads: int = option(0, "torch CPU threads (0: torch's default)")
    engine: str = option("process", "where the decode loop runs: process (its own process, so the HTTP side "
                                    "and the engine never wait on each other for Python's GIL) or thread "
                                    "(a thread of the server process)", choices=ENGINE_MODES)
    device: str = option("auto", "where the model runs: auto (a GPU when torch sees one, else the CPU), cpu or cuda",
                         choices=DEVICES)

    def __post_init__(self):
        check_choices(self)
        ToolFields.__post_init__(self)
        for field, lo in (("port", 0), ("max_batch", 1), ("max_queue", 1), ("max_tokens", 1), ("max_body", 1024)):
            if getattr(self, field) < lo:
                raise ConfigError(f"ServeConfig.{field} = {getattr(self, field)} is out of range; valid values: >= {lo}")
        if self.port > 65535:
            raise ConfigError(f"ServeConfig.port = {self.port} is out of range; valid values: 0..65535")


@dataclass(frozen=True)
class Plan:
    """A request ready to run: the job, and how to present its output."""
    job: Job
    opened: bool  # the prompt opened <think>: the completion starts inside the thinking
    stops: tuple[str, ...]
    reasoning: str  # visible | hidden | summary
    seed: int = 0  # sample j draws from row_seed(seed, 0, j)


@dataclass(frozen=True)
class Delta:
    """New output of choice `j`; `sample` is set on its last delta."""
    j: int
    reasoning: str
    content: str
    thinking: str  # all thinking so far (for summaries)
    thinking_done: bool
    thinking_tokens: int
    sample: Sample | None


def start_worker(engine: Engine | None, cfg: ServeConfig):
    """The batching worker `cfg` asks for: an `EngineProcess` (which loads `cfg.model` itself, so
    `engine` may still be None) or a `Worker` thread on `engine`."""
    toolbox = Toolbox.from_fields(cfg)  # here too in process mode: a tool that cannot run fails now
    if cfg.engine == "process":
        return EngineProcess(cfg.model, cfg.device, cfg.threads, cfg.max_batch, cfg.max_queue,
                             ToolFields(**{f: getattr(cfg, f) for f in ToolFields.__dataclass_fields__})
                             if toolbox else None)
    return Worker(engine, cfg.max_batch, cfg.max_queue, toolbox=toolbox)


class Service:
    def __init__(self, engine: Engine, cfg: ServeConfig, worker=None):
        """`engine` gives the tokenizer, the config and the thread worker's model; `worker`: one
        `start_worker` started already (default: started here). With `cfg.engine` process the
        engine process loads `cfg.model` itself, so `engine` must hold that same model."""
        self.engine, self.tok, self.cfg = engine, engine.tok, cfg
        self.name = cfg.name or cfg.model
        conf = engine.model.config
        self.context = int(getattr(conf, "max_position_embeddings", 0) or 2048)
        self.thinks = None not in engine.think_ids  # budgets need single <think> and </think> tokens
        self.tools = tool_names(cfg.tools)  # request name -> tag of each tool the server runs
        self.worker = worker or start_worker(engine, cfg)
        if isinstance(self.worker, EngineProcess):
            self.worker.wait_ready()
        self.streams = 0  # streaming responses open now

    def close(self) -> None:
        self.worker.close()

    # -- building a request ------------------------------------------------------------
    def check_model(self, model: str) -> None:
        if model != self.name:
            raise RequestError("model", f"model {model!r} is not served here; valid models: {self.name}",
                               kind="not_found_error")

    def tool_tags(self, requested: list[str], field: str = "tools") -> tuple[str, ...]:
        """The tags of the server's tools a request enables by name (`"tools": [{"type": NAME}]`)."""
        valid = ", ".join(self.tools) or "none (start the server with --tools, e.g. --tools calculator)"
        tags = []
        for k, name in enumerate(requested):
            if name not in self.tools:
                what = ("function tools (run by the client) are not supported" if name == "function"
                        else f"tool {name!r} is not run by this server")
                raise RequestError(f"{field}[{k}].type", f"{what}; valid types: {valid}")
            if self.tools[name] not in tags:
                tags.append(self.tools[name])
        return tuple(tags)

    def prompt(self, messages: list[tuple[str, str]]) -> tuple[list[int], bool]:
        """Prompt ids for (role, text) messages, and whether the prompt opened the thinking.

        With a chat template: the template. Without one (base models such as the
        built-in tiny model): the prompt its task format builds, i.e. the last user
        message on one line, so `3779+1029=?` is asked exactly as the arithmetic
        task asks it (`3779+1029=?\\n`).
        """
        if getattr(self.tok, "chat_template", None):
            msgs = [{"role": {"developer": "system", "tool": "user"}.get(r, r), "content": t} for r, t in messages]
            text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            users = [t for r, t in messages if r == "user"]
            if not users:
                raise RequestError("messages", "messages has no user message; valid roles: system, user, assistant")
            text = users[-1].rstrip() + "\n"
        return self.engine.encode(text), text.rstrip().endswith(THINK_OPEN)

    def limit(self, requested: int | None, field: str, prompt_len: int) -> int:
        room = self.context - prompt_len
        if room < 1:
            raise RequestError("messages", f"the prompt is {prompt_len} tokens; the model's context is "
                                           f"{self.context} tokens, so it must be at most {self.context - 1}")
        if requested is None:
            return min(self.cfg.max_tokens, room)
        if requested > room:
            raise RequestError(field, f"{field} {requested} is out of range; valid values: 1..{room} "
                                      f"(context {self.context} minus the prompt's {prompt_len} tokens)")
        return requested

    def params(self, budget: int | None, limit: int, temperature: float, top_p: float,
               stops: tuple[str, ...], field: str) -> SamplingParams:
        return sampling_params(budget if self.thinks else None, limit, temperature, top_p, stops, field)

    def plan(self, messages, budget, requested, field, temperature, top_p, stops, n, seed,
             include_reasoning, tools: tuple[str, ...] = ()) -> Plan:
        """`tools`: the tags `tool_tags` gave (the thinking then runs without a budget)."""
        ids, opened = self.prompt(messages)
        limit = self.limit(requested, field, len(ids))
        params = self.params(None if tools else budget, limit, temperature, top_p, stops, field)
        seed = secrets.randbits(63) if seed is None else seed
        job = Job(ids, params, [row_seed(seed, 0, j) for j in range(n)], limit, asyncio.get_running_loop(),
                  tools=tools)
        mode = "hidden" if include_reasoning is False else self.cfg.reasoning
        return Plan(job, opened, stops, mode, seed)

    def more(self, plan: Plan, first: int, n: int) -> Plan:
        """The same request again for samples first..first+n-1 (their own seeds: a pool's continuation)."""
        j = plan.job
        job = Job(j.prompt_ids, j.params, [row_seed(plan.seed, 0, first + k) for k in range(n)], j.limit, j.loop,
                  tools=j.tools)
        return replace(plan, job=job)

    # -- running it ----------------------------------------------------------------------
    def submit(self, plan: Plan) -> None:
        if plan.job.rows > self.cfg.max_batch:  # it could never join the batch
            raise RequestError("n", f"n {plan.job.rows} is out of range; valid values: 1..{self.cfg.max_batch} "
                                    f"(the server's --max-batch)")
        try:
            self.worker.submit(plan.job)
        except Busy as e:
            raise RequestError(None, f"server busy: {e}; retry shortly", 429, "rate_limit_error",
                               headers={"Retry-After": "1"}) from None
        except EngineGone as e:
            raise RequestError(None, f"server unavailable: {e}", 503, "api_error") from None

    def dropper(self, plan: Plan):
        """A callable that drops `plan`'s job if it has not finished (a no-op once it has)."""
        return lambda: self.worker.cancel(plan.job)

    async def results(self, plan: Plan, is_disconnected=None) -> list[Sample]:
        """All samples, in choice order; the job is dropped if the client goes away."""
        job, out = plan.job, [None] * plan.job.rows
        done = False
        try:
            while None in out:
                try:
                    kind, payload = await asyncio.wait_for(job.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if is_disconnected is not None and await is_disconnected():
                        return []
                    continue
                if kind == "error":
                    raise RequestError(None, payload, 500, "server_error")
                if kind == "done":
                    out[payload.sample_index] = payload
            done = True
            return out  # type: ignore[return-value]
        finally:
            if not done:
                self.worker.cancel(job)

    async def stream(self, plan: Plan):
        """Deltas as tokens arrive; drops the job if abandoned."""
        async with self.streaming(plan) as batches:
            async for deltas in batches:
                for delta in deltas:
                    yield delta

    @contextlib.asynccontextmanager
    async def streaming(self, plan: Plan):
        """`async with svc.streaming(plan) as batches`: lists of deltas as they arrive (everything queued
        at once in one list, which a route sends in one write). Leaving the block before the job has
        finished drops it, wherever that happens: also at a route's first event, before any tokens."""
        batches = self._batches(plan)
        await anext(batches)  # into its try: from here on, closing it drops the job unless it finished
        try:
            yield batches
        finally:
            await batches.aclose()

    async def _batches(self, plan: Plan):
        job = plan.job
        ids: list[list[int]] = [[] for _ in range(job.rows)]
        splits = [StreamSplit(plan.opened, plan.stops) for _ in range(job.rows)]
        left, sent = job.rows, False
        self.streams += 1
        try:
            yield []  # primed by `streaming`
            while left:
                items = [await job.queue.get()]
                if sent and self.streams >= COALESCE_FROM:
                    await asyncio.sleep(COALESCE_S)
                while not job.queue.empty():
                    items.append(job.queue.get_nowait())
                deltas = self._deltas(items, ids, splits)
                left -= sum(d.sample is not None for d in deltas)
                sent = sent or any(d.reasoning or d.content for d in deltas)
                yield deltas
        finally:
            self.streams -= 1
            if left:
                self.worker.cancel(job)

    def _deltas(self, items, ids, splits) -> list[Delta]:
        changed, done = set(), {}
        for kind, payload in items:
            if kind == "error":
                raise RequestError(None, payload, 500, "server_error")
            if kind == "tokens":
                for j, tk in payload:
                    ids[j].append(tk)
                    changed.add(j)
            else:
                done[payload.sample_index] = payload
        out = []
        for j in sorted(changed | set(done)):
            s = done.get(j)
            if s is not None:
                text = s.text
                dr, dc = splits[j].feed(text, final=True, stopped=s.finish == "stop")
            else:
                text = self.tok.decode(ids[j], skip_special_tokens=True)
                dr, dc = splits[j].feed(text)
            think = s.thinking_tokens if s is not None else self.engine.count_sections(ids[j], text)[0]
            out.append(Delta(j, dr, dc, splits[j].thinking, splits[j].thinking_done, think, s))
        return out


def finish_reason(sample: Sample) -> str:
    return "length" if sample.finish == "length" else "stop"
