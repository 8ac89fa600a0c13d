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

Back-pressure: at most `max_queue` jobs wait for room; beyond that `submit`
raises `Busy` at once (the HTTP layer answers 429 with Retry-After), never a
hang.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from ponder.engine.engine import Engine, SamplingParams

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

    @property
    def rows(self) -> int:
        return len(self.seeds)


class Worker:
    """Owns an `Engine` batch and steps it in a background thread.

    `deliver(updates)` gets each loop's [(job, item), ...] (by default: into the jobs'
    queues on their event loops); `started`: also a ("started", None) item when a job
    joins the batch and a ("dropped", None) item when a cancelled job is dropped (the
    engine process tells the server which jobs wait and which have gone).
    """

    def __init__(self, engine: Engine, max_batch: int = 64, max_queue: int = 256, deliver=None,
                 started: bool = False):
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
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
            return {"running_requests": len(self._jobs), "queued_requests": len(self._inbox),
                    "steps": self.steps, "dropped_requests": self.dropped}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # -- the worker thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._inbox or self._cancelled or self._jobs):
                    self._cv.wait()
                if self._closed:
                    return
                cancelled, self._cancelled = self._cancelled, []
                admitted = self._take_admissible()
            updates: list[tuple[Job, tuple]] = []
            for job in cancelled:
                if self._drop(job) and self._started:
                    updates.append((job, ("dropped", None)))
            for job in admitted:
                self._admit(job, updates)
            if self._jobs:
                self._step(updates)
            self._deliver(updates)  # once per loop: also when only drops happened (stats changed)

    def _take_admissible(self) -> list[Job]:
        """Waiting jobs that fit in the batch now, oldest first (called under the lock)."""
        if self._jobs and len(self._inbox) < ADMIT_GROUP and self.steps - self._admitted_at < ADMIT_EVERY:
            return []
        self._admitted_at = self.steps
        rows = self.batch.running
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
        if job.rid is not None and self._jobs.pop(job.rid, None) is not None:
            self.batch.drop(job.rid)
            self.dropped += 1
            return True
        return False

    def _admit(self, job: Job, updates: list) -> None:
        try:
            job.rid = self.batch.add(job.prompt_ids, job.params, job.seeds, job.limit)
        except Exception as e:  # refused by the engine: tell this request, keep serving the others
            updates.append((job, ("error", str(e))))
            return
        self._jobs[job.rid] = job
        if self._started:
            updates.append((job, ("started", None)))

    def _step(self, updates: list) -> None:
        try:
            events = self.batch.step()
            finished = self.batch.take_finished()
        except Exception as e:  # never leave requests hanging: fail the running ones, start afresh
            log.exception("engine step failed")
            updates += [(job, ("error", f"generation failed: {e}")) for job in self._jobs.values()]
            self._jobs.clear()
            self.batch = self.engine.batch(max_rows=self.max_batch, trim=True)
            return
        self.steps += 1
        tokens: dict[int, list[tuple[int, int]]] = {}
        for ev in events:
            tokens.setdefault(ev.rid, []).append((ev.j, ev.token))
        updates += [(self._jobs[rid], ("tokens", tks)) for rid, tks in tokens.items() if rid in self._jobs]
        for s in finished:
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

