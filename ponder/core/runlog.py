"""Per-step metrics of a run: appended to RUN_DIR/metrics.jsonl and to TensorBoard.

Each line is written and flushed as soon as the step ends, so a crash loses
nothing already logged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class RunLog:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int = 0):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if resume_step and self.path.exists():  # drop lines of steps that will be redone
            keep = [l for l in self.path.read_text().splitlines()
                    if l.strip() and json.loads(l).get("step", 0) < resume_step]
            self.path.write_text("".join(l + "\n" for l in keep))
        elif not resume_step and self.path.exists():
            self.path.unlink()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.dir / "tb"))
            except ImportError:  # TensorBoard is optional; JSONL is the record
                self.tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                                for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
