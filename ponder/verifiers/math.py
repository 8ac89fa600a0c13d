"""Math answers: extract the final answer, compare it with the gold using Math-Verify.

Two halves:

1. Extraction (pure, cheap, in the caller's process): the `\\boxed{}` answer
   (braces balanced; repeating the same box is fine), else the value after the
   last "answer:" / "the answer is" marker, else the whole answer text, or
   (opt-in) the last number. Hedges are refused here, before any parsing:
   several *different* boxed answers, numbers separated only by spaces (LaTeX
   reads `1 2 3` as a sum), an empty answer, an answer longer or more deeply
   nested than any gold answer.
2. Equivalence (Math-Verify + SymPy, gold first): runs in a small pool of worker
   processes. Math-Verify's own time limit uses SIGALRM, which only works on the
   main thread, so it is switched off and the limit is enforced from outside:
   a check that overruns has its worker SIGKILLed and replaced, and the verdict
   is `invalid` ("checker timed out") -- never a silent 0. Numbers too large to
   evaluate (`9^{9^{9^9}}`, `1000000!`) are sized from the expression tree and
   judged `wrong` against an ordinary gold without being computed.

Sets, intervals and lists that merely contain the gold do not match it
(`{1, 2, 3}` is not `2`); Math-Verify already compares them as whole objects.
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ponder.core.config import ConfigError, option
from ponder.core.verdict import Verdict, correct, invalid, wrong


@dataclass(frozen=True)
class MathConfig:
    timeout_s: float = option(5.0, "wall-clock limit for one check; past it the worker is killed and the verdict is invalid")
    rel_tol: float = option(0.0, "also accept numbers within this relative tolerance of the gold (0 = off)")
    abs_tol: float = option(0.0, "also accept numbers within this absolute tolerance of the gold (0 = off)")
    float_rounding: int = option(6, "Math-Verify rounds floats to this many decimals before comparing")
    last_number: bool = option(False, "with no \\boxed{} or 'answer:' marker, fall back to the last number in the text")
    max_answer_chars: int = option(1000, "extracted answers longer than this are wrong without parsing")
    max_depth: int = option(40, "answers nesting {} ( ) [ ] deeper than this are wrong without parsing")

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ConfigError(f"MathConfig.timeout_s must be > 0, got {self.timeout_s!r}")
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ConfigError(f"MathConfig tolerances must be >= 0, got rel_tol={self.rel_tol}, abs_tol={self.abs_tol}")
        if self.max_answer_chars < 1 or self.max_depth < 1:
            raise ConfigError("MathConfig.max_answer_chars and max_depth must be >= 1")


# ---------------------------------------------------------------- extraction

@dataclass(frozen=True)
class Extracted:
    text: str | None  # the final answer, or None when there is none to check
    how: str  # "boxed", "marker", "whole", "last-number", or why nothing was extracted


# `\{` and `\}` are literal braces in LaTeX and do not group, so they are tokens of their own.
_BRACE_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")


def boxed_answers(text: str) -> list[str]:
    """Contents of every top-level `\\boxed{...}` / `\\fbox{...}`, braces balanced.

    One linear scan with a stack, so a megabyte of `\\boxed{\\boxed{...` costs
    no more than reading it. An unclosed box is ignored.

    >>> boxed_answers(r"so \\boxed{\\frac{1}{2}} or \\boxed{3}")
    ['\\\\frac{1}{2}', '3']
    >>> boxed_answers(r"\\boxed{\\{1,2\\}}"), boxed_answers(r"\\boxed{3")
    (['\\\\{1,2\\\\}'], [])
    """
    out: list[str] = []
    stack: list[int | None] = []  # content start for a box frame, None for a plain group
    for m in _BRACE_TOKENS.finditer(text):
        tok = m.group()
        if tok in ("\\{", "\\}"):
            continue
        if tok == "{":
            stack.append(None)
        elif tok == "}":
            if not stack:
                continue
            start = stack.pop()
            if start is not None and all(s is None for s in stack):
                out.append(text[start:m.start()].strip())
        else:
            stack.append(m.end())
    return out


_MARKER = re.compile(r"(?:final\s+answer|the\s+answer|answer)\s*(?:is\s*:?|:|=)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?")
_NUMBER_LIST = re.compile(r"\d(?:\s*[,;]\s+|\s+(?:or|and)\s+|\s+)-?\d")


def tidy(ans: str) -> str:
    """Strip the wrapping a model puts around an answer: `$...$`, `**`, a final period.

    >>> tidy(" $42$. "), tidy("**x = 3**"), tidy(r"\\(\\frac12\\)")
    ('42', 'x = 3', '\\\\frac12')
    """
    ans = ans.strip()
    for _ in range(3):
        before = ans
        ans = ans.strip().rstrip(".").strip()
        if ans.startswith("**") != ans.endswith("**"):  # "**Answer:** 3" leaves a lone bold marker
            ans = ans.strip("*").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("**", "**"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(ans) >= len(left) + len(right) and ans.startswith(left) and ans.endswith(right):
                ans = ans[len(left):len(ans) - len(right)].strip()
        if ans == before:
            break
    return ans


_THOUSANDS = re.compile(r"(?<=\d)(?:\\,|\\!|\\ |\{,\})(?=\d{3}(?!\d))")


def join_thousands(s: str) -> str:
    """Drop LaTeX thousands separators, which SymPy would read as multiplication.

    >>> join_thousands(r"1\\,000\\,000"), join_thousands(r"1{,}234"), join_thousands(r"2\\,x")
    ('1000000', '1234', '2\\\\,x')
    """
    return _THOUSANDS.sub("", s)


_LEADING_MATH = re.compile(r"\s*(?:\*\*)?\s*(\$\$?)(.+?)\1")


def marker_value(rest: str) -> str:
    """The answer in the rest of a marker line: its leading `$...$`, else up to the first sentence end.

    >>> marker_value("$3$. I hope it is correct."), marker_value("** 12. Done"), marker_value("x = 2")
    ('3', '** 12', 'x = 2')
    """
    m = _LEADING_MATH.match(rest)
    if m:
        return m.group(2)
    return re.split(r"\.\s", rest, maxsplit=1)[0]


def extract_answer(text: str, last_number: bool = False) -> Extracted:
    """The final answer in an answer text, and how it was found.

    >>> extract_answer(r"first \\boxed{2}, no wait, \\boxed{3}")
    Extracted(text=None, how='several different boxed answers: 2 | 3')
    >>> extract_answer("The answer is $\\\\frac{1}{2}$.")
    Extracted(text='\\\\frac{1}{2}', how='marker')
    >>> extract_answer("x is 4, so y = 7", last_number=True)
    Extracted(text='7', how='last-number')
    """
    if not text or not text.strip():
        return Extracted(None, "empty answer")
    boxes = boxed_answers(text)
    if boxes:
        distinct = list(dict.fromkeys(re.sub(r"\s+", "", b) for b in boxes))
        if len(distinct) > 1:
            shown = " | ".join(d[:40] for d in distinct[:5])
            return Extracted(None, f"several different boxed answers: {shown}")
        return Extracted(boxes[-1], "boxed") if boxes[-1] else Extracted(None, "empty \\boxed{}")
    markers = list(_MARKER.finditer(text))
    if markers:
        rest = text[markers[-1].end():].lstrip(" \t*")
        lines = [ln for ln in rest.split("\n") if ln.strip()]  # "The answer is:" may end its line
        ans = tidy(marker_value(lines[0])) if lines else ""
        return Extracted(ans, "marker") if ans else Extracted(None, "empty answer after the marker")
    if last_number:
        if _NUMBER_LIST.search(text):  # "1, 2, 3" must not count as an answer of 3
            return Extracted(None, "a list of candidate numbers")
        nums = list(_NUMBER.finditer(text))
        if nums:
            return Extracted(nums[-1].group().replace(" ", ""), "last-number")
    return Extracted(tidy(text), "whole")


# Two numbers with only spacing between them: LaTeX reads "1 2 3" as 1*2*3 or
# 1+2+3 depending on the parser, so a spaced list could happen to equal the gold.
_FRAC_DIGITS = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_SPACED_NUMBERS = re.compile(r"\d(?:\s|~|\\[ ,;:!>]|\\q?quad\b)+\d")
_OPEN, _CLOSE = "{([", "})]"


def nesting_depth(s: str) -> int:
    """Deepest bracket nesting in `s` (all of `{ ( [` count).

    >>> nesting_depth("f((x))"), nesting_depth("{{{1}}}")
    (2, 3)
    """
    depth = best = 0
    for ch in s:
        if ch in _OPEN:
            depth += 1
            best = max(best, depth)
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
    return best


def precheck(ans: str, cfg: MathConfig) -> str | None:
    """Why `ans` is wrong without parsing it, or None if it is worth parsing.

    >>> precheck("1 2 3", MathConfig()), precheck(r"\\frac 1 2", MathConfig())
    ('several numbers separated by spaces', None)
    """
    if len(ans) > cfg.max_answer_chars:
        return f"answer has {len(ans)} characters (limit {cfg.max_answer_chars})"
    if nesting_depth(ans) > cfg.max_depth:
        return f"answer nests brackets deeper than {cfg.max_depth}"
    if _SPACED_NUMBERS.search(_FRAC_DIGITS.sub(r"\\frac{\1}{\2}", ans)):
        return "several numbers separated by spaces"
    return None


def as_latex(s: str) -> str:
    """Wrap a bare answer in `$...$` so Math-Verify parses all of it as one LaTeX expression.

    Without the wrapping Math-Verify's plain-expression extractor would pick the
    last number out of "1, 2, 3" and match a gold of 3.
    """
    s = s.strip()
    if "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s:
        return s
    return f"${s}$"


# ------------------------------------------------------------------ worker side

def _compare(gold: str, answer: str, float_rounding: int, rel_tol: float, abs_tol: float) -> tuple[str, str]:
    """Runs inside a worker process: ("match" | "nomatch" | "badgold" | "badanswer", detail)."""
    from math_verify import LatexExtractionConfig, parse, verify

    cfg = [LatexExtractionConfig()]
    g = parse(as_latex(gold), cfg, parsing_timeout=None)
    if not g:
        return "badgold", f"gold {gold[:80]!r} could not be parsed"
    a = parse(as_latex(answer), cfg, parsing_timeout=None)
    if not a:
        return "badanswer", f"answer {answer[:80]!r} could not be parsed"
    if _digits(a) > MAX_DIGITS and _digits(g) <= MAX_DIGITS:
        # SymPy would try to evaluate 9^(9^(9^9)) and never return; a number that
        # size cannot equal a gold that is not, so say so at once.
        return "nomatch", f"answer is a number of magnitude ~10^±{_digits(a):.3g}; the gold is not"
    if verify(g, a, float_rounding=float_rounding, timeout_seconds=None):
        return "match", ""
    if (rel_tol or abs_tol) and _numerically_close(g, a, rel_tol, abs_tol):
        return "match", "within tolerance"
    return "nomatch", f"{str(a[0])[:80]} is not {str(g[0])[:80]}"


MAX_DIGITS = 100_000  # numbers estimated larger (or smaller) than 10^±this are compared by size, not evaluated


def _digits(parsed: list) -> float:
    """Estimate of max |log10 |x|| over the numeric expressions in `parsed`.

    Computed on the expression tree in floats (inf when it overflows), so it never
    evaluates a power tower; non-numeric parts count as 0.
    """
    import math

    import sympy

    def log10(x) -> float:  # ~ log10|x|; 0.0 for what it cannot size (symbols, most functions)
        if not isinstance(x, sympy.Basic) or x.is_zero:
            return 0.0
        if x.is_Integer:
            n = abs(int(x))
            return (math.log10(n) if n < 10**300 else n.bit_length() * math.log10(2))
        if x.is_Rational:
            return log10(sympy.Integer(x.p)) - log10(sympy.Integer(x.q))
        if x.is_Float:
            return math.log10(abs(float(x)))
        if x.is_Pow:
            return value(x.exp) * log10(x.base) if log10(x.base) != 0 else 0.0
        if isinstance(x, sympy.exp):
            return value(x.args[0]) * math.log10(math.e)
        if isinstance(x, sympy.factorial):
            n = value(x.args[0])
            return n * math.log10(n) if n > 1 else 0.0
        if x.is_Mul:
            return sum(map(log10, x.args))
        if x.args:
            return max(map(log10, x.args)) + math.log10(len(x.args))
        return 0.0

    def value(x) -> float:  # float value of an exponent, +-inf when too large to compute safely
        size = log10(x)
        if size > 15:
            return -math.inf if x.is_negative else math.inf
        try:
            v = complex(sympy.N(x, 20))
        except (TypeError, ValueError):
            return 0.0  # symbolic exponent: x**n is not a number to size
        return v.real

    sizes = [abs(log10(x)) for x in parsed if isinstance(x, sympy.Basic) and x.is_number]
    return max((0.0 if math.isnan(s) else s for s in sizes), default=0.0)


def _numerically_close(golds: list, answers: list, rel_tol: float, abs_tol: float) -> bool:
    import math

    import sympy

    def value(x):
        if isinstance(x, sympy.Basic) and x.is_number:
            v = complex(sympy.N(x, 30))
            if v.imag == 0 and math.isfinite(v.real):
                return v.real
        return None

    gv = [v for v in map(value, golds) if v is not None]
    av = [v for v in map(value, answers) if v is not None]
    return any(math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol) for x in gv for y in av)


def _worker_main(rfd: int, wfd: int, memory_mb: int) -> None:
    """Loop of one worker process: receive (gold, answer, options), send the outcome."""
    import logging
    import signal
    import sys
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # a stray print must not reach the parent's terminal
    import resource

    if memory_mb > 0:
        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Backstop for a worker orphaned mid-computation: its parent-death watch
    # needs the GIL, which one long big-integer operation can hold for minutes.
    resource.setrlimit(resource.RLIMIT_CPU, (WORKER_CPU_S, WORKER_CPU_S))
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" is on purpose
    _compare("1", "1", 6, 0.0, 0.0)  # warm the lazy imports before "ready": the clock is for real work
    _exit_with_parent()
    inbox, outbox = Connection(rfd, writable=False), Connection(wfd, readable=False)
    outbox.send(("ready", ""))
    while True:
        try:
            req = inbox.recv()
        except (EOFError, OSError):
            sys.exit(0)
        try:
            out = _compare(*req)
        except MemoryError:
            out = ("error", f"checker ran out of memory ({memory_mb} MB)")
        except RecursionError:
            out = ("error", "checker hit Python's recursion limit")
        except Exception as e:  # any crash in SymPy is the checker's failure, reported as invalid
            out = ("error", f"checker crashed: {type(e).__name__}: {str(e)[:200]}")
        outbox.send(out)


WORKER_CPU_S = 3600  # CPU seconds a worker may use in its life; the pool recycles workers well before


def _exit_with_parent() -> None:
    """A worker busy in SymPy never reads its pipe's EOF; watch the parent pid instead."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class _Worker:
    """One checker process, talking over two pipes; started with a fresh interpreter.

    A fresh `python` (not fork) so that the worker never inherits the parent's
    threads or locks (torch, the caller's thread pool) and never re-imports the
    caller's `__main__`.
    """

    def __init__(self, memory_mb: int):
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        root = str(Path(__file__).resolve().parents[2])  # so a source checkout works uninstalled
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        code = f"from ponder.verifiers.math import _worker_main; _worker_main({to_child_r}, {from_child_w}, {memory_mb})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w), env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.outbox = Connection(to_child_w, readable=False)
        self.inbox = Connection(from_child_r, writable=False)
        self.ready = False
        self.tasks = 0

    def wait_ready(self, timeout: float) -> bool:
        if not self.ready and self.inbox.poll(timeout):
            try:
                self.ready = self.inbox.recv()[0] == "ready"
            except (EOFError, OSError):
                return False
        return self.ready

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        self.outbox.close()
        self.inbox.close()


class MathPool:
    """A few worker processes that run Math-Verify, each killable on its own.

    `compare()` is safe to call from any number of threads; each call borrows
    one idle worker. A check that overruns its time limit gets its worker
    killed and replaced; the replacement starts in the background and is
    waited for (outside any check's time limit) by the next call that needs it.
    """

    def __init__(self, workers: int = 2, memory_mb: int = 2048, max_tasks: int = 2000,
                 startup_timeout_s: float = 120.0):
        if workers < 1:
            raise ConfigError(f"MathPool needs at least 1 worker, got {workers}")
        import importlib.util

        if importlib.util.find_spec("math_verify") is None:
            raise ConfigError("math verification needs the math-verify package (pip install math-verify)")
        self.workers, self.memory_mb, self.max_tasks = workers, memory_mb, max_tasks
        self.startup_timeout_s = startup_timeout_s
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self.closed = False
        for _ in range(workers):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        w = _Worker(self.memory_mb)
        with self._lock:
            self._all.add(w)
        return w

    def _retire(self, w: _Worker) -> _Worker:
        with self._lock:
            self._all.discard(w)
        w.kill()
        return w if self.closed else self._spawn()  # no new processes after close()

    def _borrow(self) -> _Worker:
        """An idle worker, preferring one that has finished starting.

        After a kill the replacement needs a second or more to import SymPy; the
        next check should not wait for it while another worker sits ready.
        """
        w = self._idle.get()
        if w.wait_ready(0):
            return w
        passed: list[_Worker] = []
        try:
            while True:
                other = self._idle.get_nowait()
                if other.wait_ready(0):
                    for x in [w, *passed]:
                        self._idle.put(x)
                    return other
                passed.append(other)
        except queue.Empty:
            pass
        for x in passed:
            self._idle.put(x)
        return w

    def compare(self, gold: str, answer: str, cfg: MathConfig) -> Verdict:
        """Gold-first equivalence of two already-extracted answers, under cfg.timeout_s."""
        if self.closed:
            raise RuntimeError("MathPool is closed")
        w = self._borrow()
        try:
            if not w.wait_ready(self.startup_timeout_s):
                w = self._retire(w)
                return invalid("checker worker failed to start")
            w.tasks += 1
            try:
                w.outbox.send((gold, answer, cfg.float_rounding, cfg.rel_tol, cfg.abs_tol))
                if not w.inbox.poll(cfg.timeout_s):
                    w = self._retire(w)
                    return invalid(f"checker timed out after {cfg.timeout_s:g}s")
                kind, detail = w.inbox.recv()
            except (EOFError, OSError):
                code = w.proc.poll()
                w = self._retire(w)
                return invalid(f"checker process died (exit code {code})")
            if w.tasks >= self.max_tasks:  # SymPy's caches only grow (and CPU time adds up); start afresh
                w = self._retire(w)
            return _verdict(kind, detail)
        finally:
            self._idle.put(w)

    def close(self) -> None:
        self.closed = True
        with self._lock:
            workers, self._all = list(self._all), set()
        for w in workers:
            w.kill()

    def __enter__(self) -> MathPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _verdict(kind: str, detail: str) -> Verdict:
    if kind == "match":
        return correct("equivalent" + (f" ({detail})" if detail else ""))
    if kind in ("nomatch", "badanswer"):
        return wrong(detail)
    return invalid(detail)  # badgold, error: the checker or the task is at fault, not the model


_default: MathPool | None = None
_default_lock = threading.Lock()


def default_pool() -> MathPool:
    """One shared pool per process, created on first use and closed at exit.

    Shared because worker processes are a machine resource: every task and
    grader in a process should queue on the same few workers.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = MathPool(workers=max(1, min(2, os.cpu_count() or 1)))
            atexit.register(_default.close)
        return _default


# ------------------------------------------------------------------ public API

def verify_math(answer: str | None, gold: str, cfg: MathConfig = MathConfig(),
                pool: MathPool | None = None) -> Verdict:
    """Check an answer text (what follows `</think>`) against a gold answer.

    Never raises on any input; a checker that fails or overruns gives `invalid`.
    """
    if answer is None:
        return wrong("no answer: the thinking was never closed")
    ex = extract_answer(answer, cfg.last_number)
    if ex.text is None:
        return wrong(ex.how)
    answer = join_thousands(ex.text)
    why = precheck(answer, cfg)
    if why:
        return wrong(why)
    if not gold or not gold.strip():
        return invalid("empty gold answer")
    return (pool or default_pool()).compare(join_thousands(tidy(gold)), answer, cfg)


def verify_math_many(pairs: Iterable[tuple[str | None, str]], cfg: MathConfig = MathConfig(),
                     pool: MathPool | None = None) -> list[Verdict]:
    """`verify_math` over (answer, gold) pairs, spread over the pool's workers."""
    pool = pool or default_pool()
    pairs = list(pairs)
    with ThreadPoolExecutor(max_workers=pool.workers) as ex:
        return list(ex.map(lambda p: verify_math(p[0], p[1], cfg, pool), pairs))


__all__ = ["MathConfig", "MathPool", "Extracted", "boxed_answers", "extract_answer", "precheck",
           "verify_math", "verify_math_many", "default_pool", "tidy"]
