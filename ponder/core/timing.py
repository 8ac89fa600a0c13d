"""Wall-clock seconds per named phase of a step: the breakdown the benchmarks print.

Cheap by design: two `perf_counter` calls per phase entry, no synchronisation
(CPU work is synchronous), nothing recorded per token.

>>> t = Phases()
>>> with t("a"):
...     pass
>>> with t("a"):
...     pass
>>> sorted(t.seconds), t.seconds["a"] >= 0
(['a'], True)
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class Phases:
    """`with phases("fwd_bwd"): ...` adds that block's wall seconds to `phases.seconds["fwd_bwd"]`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def metrics(self, prefix: str = "time_") -> dict[str, float]:
        return {prefix + k: v for k, v in self.seconds.items()}
