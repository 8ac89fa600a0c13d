"""Continuous batching: one thread steps the engine's running batch; requests join and leave it.

The HTTP side runs on an asyncio loop; the engine is synchronous torch code.
One worker thread owns the engine's `Batch` and loops: take cancelled jobs out,
admit waiting jobs while the batch has room (`max_batch` rows), run one step,
hand each job its new tokens and finished samples. A request never waits for
the others to finish: it joins at the next step, and its result is delivered
the step its last row finishes.

Handing over: per step, one call of `deliver` hands over all jobs' updates (not
one per token). In a server process that is one `call_soon_threadsafe` per
event loop, and each job's consumer drains everything queued at once, so a busy
server sends fewer, larger stream chunks rather than falling behind; in the
engine process of `ponder.serve.engine_proc` it is one message to the server.

Tools (`ponder serve --tools`): a job that enables some of the server's tools runs as
`ponder.rl.tool_rollout.generate_with_tools` does, inside the shared batch: its rows
stop at a tool's closing tag, the call runs on a thread while every other row keeps
decoding, and the row rejoins with `<output>…</output>` appended (sent to the client
as tokens) and the seed of its next segment, so a served completion with tools is
the one `ponder eval --tools` samples from the same seed (tested). A paused row keeps
its place: admission counts it as running.

Back-pressure: at most `max_queue` jobs wait for room; beyond that `submit`
raises `Busy` at once (the HTTP layer answers 429 with Retry-After), never a
hang.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ponder.engine.engine import Engine, SamplingParams
from ponder.rl.tool_rollout import TOOL_THREADS, ToolRow, finish_row, resume_row, segment_done
from ponder.verifiers.tools import ToolResult, Toolbox

log = logging.getLogger("ponder.serve")

# While rows are running, waiting requests are admitted every ADMIT_EVERY steps (or as soon as
# ADMIT_GROUP wait): each admission is one prefill forward, which costs about a decode step, so
# prefilling arrivals together instead of one per step buys throughput for a few steps of TTFT.
ADMIT_EVERY, ADMIT_GROUP = 4, 8


class Busy(RuntimeError):
    """The wait queue is full."""


@dataclass(eq=False)
class Job:
    """One request: `len(seeds)` samples of one prompt. Updates arrive on `queue` as
    ("tokens", [(j, token), ...]), ("done", Sample) or ("error", message)."""
    prompt_ids: list[int]
    params: SamplingParams
    seeds: list[int]
    limit: int
    loop: asyncio.AbstractEventLoop | None  # where updates go (None: a job of the engine process)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    rid: int | None = None
    left: int = 0  # samples not finished yet
    tag: int = 0  # the server's id of a job run by the engine process
    tools: tuple[str, ...] = ()  # tags of the server's tools this request enabled

    @property
    def rows(self) -> int:
        return len(self.seeds)


@dataclass(eq=False)
class _ToolJob:
    """A running job with tools: its rows across segments, its toolbox, params with the tools' stops."""
    rows: list[ToolRow]
    toolbox: Toolbox
    params: SamplingParams
    rids: set[int] = field(default_factory=set)  # its requests in the batch (first segment, rejoined rows)


class Worker:
    """Owns an `Engine` batch and steps it in a background thread.

    `deliver(updates)` gets each loop's [(job, item), ...] (by default: into the jobs'
    queues on their event loops); `started`: also a ("started", None) item when a job
    joins the batch and a ("dropped", None) item when a cancelled job is dropped (the
    engine process tells the server which jobs wait and which have gone). `toolbox`: the
    server's tools (None: a job that asks for one is refused).
    """

    def __init__(self, engine: Engine, max_batch: int = 64, max_queue: int = 256, deliver=None,
                 started: bool = False, toolbox: Toolbox | None = None):
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.toolbox = toolbox
        self._tool_jobs: dict[Job, _ToolJob] = {}
        self._segments: dict[int, tuple[Job, ToolRow | None]] = {}  # rid -> its tool job (row None: the first)
        self._calls: dict[Future, tuple[Job, ToolRow, str]] = {}  # tool calls running: job, row, tag
        self._tool_pool = ThreadPoolExecutor(TOOL_THREADS, thread_name_prefix="ponder-serve-tool") if toolbox else None
        self._deliver, self._started = deliver or _deliver_all, started
        self.batch = engine.batch(max_rows=max_batch, trim=True)
        self._cv = threading.Condition()
        self._inbox: deque[Job] = deque()
        self._cancelled: list[Job] = []
        self._jobs: dict[int, Job] = {}  # rid -> running job
        self._closed = False
        self.steps, self.dropped = 0, 0  # decode steps run; requests dropped because their client left
        self._admitted_at = 0  # the step of the last admission
        self._thread = threading.Thread(target=self._run, name="ponder-serve-worker", daemon=True)
        self._thread.start()

    # -- called from the event loop -------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cv:
            if len(self._inbox) >= self.max_queue:
                raise Busy(f"{len(self._inbox)} requests are waiting (max_queue {self.max_queue})")
            job.left = job.rows
            self._inbox.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Drop `job` (its client went away); a no-op once it has finished."""
        with self._cv:
            self._cancelled.append(job)
            self._cv.notify()

    def stats(self) -> dict:
        with self._cv:
            return {"running_requests": len(self._jobs) + len(self._tool_jobs), "queued_requests": len(self._inbox),
                    "steps": self.steps, "dropped_requests": self.dropped}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)
        if self._tool_pool is not None:
            self._tool_pool.shutdown(wait=False, cancel_futures=True)

    def _wake(self, _future=None) -> None:
        with self._cv:
            self._cv.notify()

    # -- the worker thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._inbox or self._cancelled or self._jobs or self.batch.running
                           or any(f.done() for f in self._calls)):
                    self._cv.wait()
                if self._closed:
                    return
                cancelled, self._cancelled = self._cancelled, []
                admitted = self._take_admissible()
            updates: list[tuple[Job, tuple]] = []
            for job in cancelled:
                if job in admitted:  # cancelled while it waited, taken from the inbox in this same turn
                    admitted.remove(job)
                    self.dropped += 1
                elif not self._drop(job):
                    continue
                if self._started:
                    updates.append((job, ("dropped", None)))
            for job in admitted:
                self._admit(job, updates)
            self._resume_calls(updates)
            if self.batch.running:
                self._step(updates)
            self._deliver(updates)  # once per loop: also when only drops happened (stats changed)

    def _take_admissible(self) -> list[Job]:
        """Waiting jobs that fit in the batch now, oldest first (called under the lock)."""
        if (self._jobs or self._tool_jobs) and len(self._inbox) < ADMIT_GROUP \
                and self.steps - self._admitted_at < ADMIT_EVERY:
            return []
        self._admitted_at = self.steps
        rows = self.batch.running + len(self._calls)  # a row paused for a tool keeps its place
        out = []
        while self._inbox and rows + self._inbox[0].rows <= self.max_batch:
            job = self._inbox.popleft()
            rows += job.rows
            out.append(job)
        return out

    def _drop(self, job: Job) -> bool:
        """Drop `job` if it waits or runs (False: it has finished already)."""
        with self._cv:
            if job in self._inbox:
                self._inbox.remove(job)
                self.dropped += 1
                return True
        if job in self._tool_jobs:
            self._end_tool_job(job)
            self.dropped += 1
            return True
        if job.rid is not None and self._jobs.pop(job.rid, None) is not None:
            self.batch.drop(job.rid)
            self.dropped += 1
            return True
        return False

    def _admit(self, job: Job, updates: list) -> None:
        try:
            if job.tools:
                return self._admit_with_tools(job, updates)
            job.rid = self.batch.add(job.prompt_ids, job.params, job.seeds, job.limit)
        except Exception as e:  # refused by the engine: tell this request, keep serving the others
            updates.append((job, ("error", str(e))))
            return
        self._jobs[job.rid] = job
        if self._started:
            updates.append((job, ("started", None)))

    def _admit_with_tools(self, job: Job, updates: list) -> None:
        if self.toolbox is None or any(t not in self.toolbox.tools for t in job.tools):
            raise ValueError(f"tools {list(job.tools)} are not run by this server; it runs: "
                             f"{', '.join(self.toolbox.tools) if self.toolbox else 'none'}")
        box = self.toolbox.subset(job.tools)
        tj = _ToolJob([ToolRow(0, j, seed, job.limit) for j, seed in enumerate(job.seeds)], box,
                      box.with_stops(job.params))
        job.rid = self.batch.add(job.prompt_ids, tj.params, job.seeds, job.limit)
        tj.rids.add(job.rid)
        self._tool_jobs[job] = tj
        self._segments[job.rid] = (job, None)
        if self._started:
            updates.append((job, ("started", None)))

    def _end_tool_job(self, job: Job) -> None:
        """Forget a tool job (finished or dropped): its requests leave the batch, late calls are ignored."""
        tj = self._tool_jobs.pop(job)
        for rid in tj.rids:
            self.batch.drop(rid)
            self._segments.pop(rid, None)

    def _tool_row_done(self, job: Job, done, updates: list) -> None:
        updates.append((job, ("done", done.sample)))  # `done` is a ToolSample: the Sample of all its tokens
        job.left -= 1
        if job.left == 0:
            self._end_tool_job(job)

    def _segment_finished(self, s, updates: list) -> None:
        """A tool job's row stopped: at a tool call (run it; the row waits) or at its end."""
        job, row = self._segments[s.prompt_index]
        tj = self._tool_jobs[job]
        row = row if row is not None else tj.rows[s.sample_index]
        call = segment_done(self.engine, row, s, tj.toolbox)
        if call is not None and len(row.ids) < row.limit:
            future = self._tool_pool.submit(tj.toolbox.call, *call, len(row.calls))
            self._calls[future] = (job, row, call[0])
            future.add_done_callback(self._wake)
        else:  # done, or a call with no room left for its output
            self._tool_row_done(job, finish_row(self.engine, job.prompt_ids, row,
                                                "length" if call is not None else s.finish), updates)

    def _resume_calls(self, updates: list) -> None:
        """Rows whose tool call returned rejoin the batch with its output (sent as tokens)."""
        for future in [f for f in self._calls if f.done()]:
            job, row, tag = self._calls.pop(future)
            tj = self._tool_jobs.get(job)
            if tj is None:  # dropped while its call ran
                continue
            try:
                result = future.result()
            except Exception as e:  # Toolbox.call reports a tool's failures itself; this is a bug of ours
                result = ToolResult(tag, "", f"error: {tag}: {e}", True, 0.0)
            rid, out = resume_row(self.engine, self.batch, job.prompt_ids, row, result, tj.params)
            if out:
                updates.append((job, ("tokens", [(row.j, t) for t in out])))
            if rid is None:
                self._tool_row_done(job, finish_row(self.engine, job.prompt_ids, row, "length"), updates)
            else:
                tj.rids.add(rid)
                self._segments[rid] = (job, row)

    def _step(self, updates: list) -> None:
        try:
            events = self.batch.step()
            finished = self.batch.take_finished()
        except Exception as e:  # never leave requests hanging: fail the running ones, start afresh
            log.exception("engine step failed")
            failed = list(self._jobs.values()) + list(self._tool_jobs)
            updates += [(job, ("error", f"generation failed: {e}")) for job in failed]
            self._jobs.clear()
            self._tool_jobs.clear()
            self._segments.clear()
            self._calls.clear()
            self.batch = self.engine.batch(max_rows=self.max_batch, trim=True)
            return
        self.steps += 1
        tokens: dict[Job, list[tuple[int, int]]] = {}
        for ev in events:
            if ev.rid in self._jobs:
                tokens.setdefault(self._jobs[ev.rid], []).append((ev.j, ev.token))
            elif ev.rid in self._segments:
                job, row = self._segments[ev.rid]
                tokens.setdefault(job, []).append((row.j if row is not None else ev.j, ev.token))
        updates += [(job, ("tokens", tks)) for job, tks in tokens.items()]
        for s in finished:
            if s.prompt_index in self._segments:
                self._segment_finished(s, updates)
                continue
            job = self._jobs.get(s.prompt_index)
            if job is None:
                continue
            updates.append((job, ("done", s)))
            job.left -= 1
            if job.left == 0:
                del self._jobs[s.prompt_index]


def _deliver_all(updates: list[tuple[Job, tuple]]) -> None:
    """Each event loop's updates in one `call_soon_threadsafe`."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for job, item in updates:
        by_loop.setdefault(job.loop, []).append((job, item))
    for loop, items in by_loop.items():
        _deliver(loop, items)


def _deliver(loop: asyncio.AbstractEventLoop, items: list[tuple[Job, tuple]]) -> None:
    def put():
        for job, item in items:
            job.queue.put_nowait(item)
    try:
        loop.call_soon_threadsafe(put)
    except RuntimeError:  # the loop has closed (server shutting down): nobody is listening
        pass

