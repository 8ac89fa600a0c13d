"""The skeleton every training run shares: steps with a progress bar, a run log, Ctrl-C that
finishes the step and saves, and the hint that says how to resume.

    with TrainingLoop(out, total=cfg.steps, start=start, desc="GRPO", ...) as loop:
        for step in loop:
            metrics = ...                                   # the algorithm's own step
            if loop.end_step(step + 1, metrics, reward=...):  # logged; a checkpoint is due
                save(...)
            loop.stop_if_asked(step + 1)                    # Ctrl-C: stop here, saved

RL (`ponder.rl.train`), SFT (`ponder.stages.sft`) and pretraining
(`ponder.stages.pretrain`) run in it; only their step differs.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tqdm import tqdm

from ponder.core.checkpoint import StopFlag
from ponder.core.runlog import RunLog


class TrainingLoop:
    def __init__(self, out: str | Path | None, total: int, start: int = 0, desc: str = "train",
                 progress: bool = True, tensorboard: bool = False, save_every: int = 0,
                 resume_hint: str = "", resume: bool = False):
        self.out, self.total, self.start, self.desc = out, total, start, desc
        self.progress, self.tensorboard, self.save_every = progress, tensorboard, save_every
        self.resume_hint, self.resume = resume_hint, resume
        self.stop = StopFlag()
        self.log: RunLog | None = None
        self.bar = None
        self._previous = None

    def __enter__(self) -> "TrainingLoop":
        if self.out is not None:
            # lines are numbered by steps done: the checkpoint's own step (line `start`) is kept,
            # steps that will be redone are dropped
            self.log = RunLog(self.out, tensorboard=self.tensorboard,
                              resume_step=self.start + 1 if (self.resume or self.start) else 0)
        self._previous = signal.signal(signal.SIGINT, self.stop)
        self.bar = tqdm(range(self.start, self.total), desc=self.desc, initial=self.start, total=self.total,
                        disable=not self.progress, mininterval=1)
        return self

    def __iter__(self):
        return iter(self.bar)

    def end_step(self, done: int, metrics: dict | None = None, **postfix: str) -> bool:
        """Log step `done`'s metrics and show `postfix`; True when a checkpoint is due
        (every `save_every` steps, at the end, and when Ctrl-C asked to stop)."""
        if metrics is not None and self.log is not None:
            self.log.log(done, metrics)
        if postfix:
            self.bar.set_postfix(refresh=False, **postfix)
        every = self.save_every and done % self.save_every == 0
        return bool(every or done == self.total or self.stop.set)

    def stop_if_asked(self, done: int) -> None:
        """After Ctrl-C: say where the run stopped and how to go on, then raise KeyboardInterrupt."""
        if self.stop.set:
            print(f"\n{self.desc}: interrupted after step {done}; checkpoint saved. {self.resume_hint}".rstrip())
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)
        if self.log is not None:
            self.log.close()
        self.bar.close()
