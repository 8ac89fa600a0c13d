"""The engine in a process of its own: the HTTP side and the decode loop never share a GIL.

In one process, the engine's thread and the event loop take turns on the GIL:
the decoder releases it around every torch op and must win it back, hundreds of
times a step, from an event loop busy with HTTP, JSON and socket writes for many
streams; on a loaded machine the waiting thread may also not be scheduled when
the GIL is handed over. Here the engine process runs the batching `Worker` as
before, and the server process keeps the HTTP side, tokenization and
detokenization (as vLLM splits its API server from its engine core).

Wire, over two one-way pipes: the server sends ("add", tag, prompt ids, params,
seeds, limit, tools), ("cancel", tag) and ("close",); the engine sends one message per
worker loop, ([(tag, item), ...], stats), items being the `Worker`'s ("tokens",
...), ("done", Sample), ("error", text), ("started", None) when a job joins
the batch and ("dropped", None) when a cancelled one has left it. A reader thread in the server hands each message to the event loops
in one `call_soon_threadsafe` per loop. If the engine process dies, every open
request gets an error, new ones a 503, and /health says so.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading

from ponder.serve.worker import Busy, Job, _deliver_all

START_TIMEOUT_S = 600  # loading a model folder from disk on a busy machine


class EngineGone(RuntimeError):
    """The engine process has exited."""


class EngineProcess:
    """The `Worker` interface (submit, cancel, stats, close) over an engine in a child process.

    The process starts loading the model at once; `wait_ready` waits until it has (so the
    server can load its own copy, for the tokenizer and config, meanwhile)."""

    def __init__(self, model: str, device: str, threads: int, max_batch: int, max_queue: int, tools=None):
        """`tools`: the server's `ToolFields` (the engine process builds the toolbox), None for none."""
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch threads
        down_r, self._down = ctx.Pipe(duplex=False)
        self._up, up_w = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=engine_main, args=(down_r, up_w, model, device, threads, max_batch, tools),
                                 name="ponder-serve-engine", daemon=True)
        self._proc.start()
        down_r.close()
        up_w.close()
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}  # tag -> job not finished yet
        self._waiting: set[int] = set()  # tags not in the batch yet
        self._cancelled: set[int] = set()  # tags whose client left, until the engine has dropped them
        self._tags = itertools.count()
        self._stats = {"steps": 0, "dropped_requests": 0}
        self.gone: str | None = None  # why the engine process exited, once it has
        self._reader = threading.Thread(target=self._read, name="ponder-serve-engine-reader", daemon=True)

    def wait_ready(self) -> None:
        """Block until the engine process has loaded the model; EngineGone if it could not."""
        if self._reader.is_alive():
            return
        first = ("failed", f"it did not load it in {START_TIMEOUT_S} s")
        try:
            if self._up.poll(START_TIMEOUT_S):
                first = self._up.recv()
        except EOFError:
            self._proc.join(timeout=10)
            first = ("failed", f"it exited with code {self._proc.exitcode}")
        if first[0] != "ready":
            self._proc.kill()
            raise EngineGone(f"the engine process could not load {self.model!r}: {first[1]}")
        self._reader.start()

    # -- called from the event loop -------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._lock:
            if self.gone:
                raise EngineGone(self.gone)
            if len(self._waiting) >= self.max_queue:
                raise Busy(f"{len(self._waiting)} requests are waiting (max_queue {self.max_queue})")
            job.tag, job.left = next(self._tags), job.rows
            self._jobs[job.tag] = job
            self._waiting.add(job.tag)
            self._send(("add", job.tag, job.prompt_ids, job.params, job.seeds, job.limit, job.tools))

    def cancel(self, job: Job) -> None:
        """Drop `job` (its client went away); a no-op once it has finished. It counts as
        running or waiting until the engine process says it has dropped it."""
        with self._lock:
            if job.tag in self._jobs and job.tag not in self._cancelled:
                self._cancelled.add(job.tag)
                self._send(("cancel", job.tag))

    def stats(self) -> dict:
        with self._lock:
            out = {"running_requests": len(self._jobs) - len(self._waiting), "queued_requests": len(self._waiting),
                   **self._stats}
        return out | ({"engine": f"exited: {self.gone}"} if self.gone else {"engine": "running"})

    def close(self) -> None:
        with self._lock:
            self._send(("close",))
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        self._down.close()

    def _send(self, msg: tuple) -> None:  # under the lock
        if self.gone:
            return
        try:
            self._down.send(msg)
        except (OSError, ValueError):  # the pipe is closed: the reader reports the exit
            pass

    # -- the reader thread --------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                wire, stats = self._up.recv()
            except (EOFError, OSError):
                return self._lost()
            _deliver_all(self._track(wire, stats))

    def _track(self, wire: list, stats: dict) -> list[tuple[Job, tuple]]:
        """The updates of still-open jobs; finished jobs forgotten, waiting ones marked started."""
        out = []
        with self._lock:
            self._stats = {"steps": stats["steps"], "dropped_requests": stats["dropped_requests"]}
            for tag, item in wire:
                job = self._jobs.get(tag)
                if job is None:
                    continue
                kind, read = item[0], tag not in self._cancelled  # a cancelled job's client has gone
                if kind == "started":
                    self._waiting.discard(tag)
                    continue
                if kind == "done":
                    job.left -= 1
                if kind in ("error", "dropped") or job.left == 0:
                    del self._jobs[tag]
                    self._waiting.discard(tag)
                    self._cancelled.discard(tag)
                if read and kind != "dropped":
                    out.append((job, item))
        return out

    def _lost(self) -> None:
        self._proc.join(timeout=5)
        with self._lock:
            self.gone = f"the engine process exited (code {self._proc.exitcode})"
            jobs, self._jobs = list(self._jobs.values()), {}
            self._waiting.clear()
            self._cancelled.clear()
        _deliver_all([(job, ("error", self.gone)) for job in jobs])


def engine_main(down, up, model: str, device: str, threads: int, max_batch: int, tools=None) -> None:
    """The engine process: load the model, run a `Worker`, relay between it and the server."""
    from ponder.core import config as C
    try:
        C.set_threads(threads)
        from ponder.engine.engine import Engine, SamplingParams
        from ponder.models.model import load_model
        from ponder.verifiers.tools import Toolbox
        toolbox = Toolbox.from_fields(tools) if tools is not None else None
        m, tok = load_model(model, device=device)
        engine = Engine(m, tok)
        engine.generate(["1"], params=SamplingParams(max_new_tokens=2))  # first calls are slow: not a request's
    except Exception as e:  # the server reports it and exits
        up.send(("failed", f"{type(e).__name__}: {e}"))
        return
    from ponder.serve.worker import Worker
    jobs: dict[int, Job] = {}  # tag -> job

    def deliver(updates: list[tuple[Job, tuple]]) -> None:
        wire = []
        for job, item in updates:
            wire.append((job.tag, item))
            if item[0] == "error" or job.left == 0:
                jobs.pop(job.tag, None)
        up.send((wire, worker.stats()))

    worker = Worker(engine, max_batch, max_queue=1 << 30, deliver=deliver, started=True,  # the server bounds the queue
                    toolbox=toolbox)
    up.send(("ready",))
    try:
        _relay(down, worker, jobs)
    finally:
        worker.close()


def _relay(down, worker, jobs: dict[int, Job]) -> None:
    while True:
        try:
            msg = down.recv()
        except (EOFError, OSError):  # the server has gone
            return
        if msg[0] == "add":
            tag, ids, params, seeds, limit, tools = msg[1:]
            job = jobs[tag] = Job(ids, params, seeds, limit, None, tag=tag, tools=tools)
            worker.submit(job)
        elif msg[0] == "cancel":
            job = jobs.pop(msg[1], None)
            if job is not None:
                worker.cancel(job)
        elif msg[0] == "close":
            return
