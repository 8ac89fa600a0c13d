"""`ponder probe TASK`: attack a task's verifier with degenerate answers before training on it.

A policy finds every hole in its reward. Each probe here is an answer that
should never earn anything -- an empty answer, the question echoed back, a
list of candidates with the gold hidden among them, several boxed answers,
a megabyte of text ending in the gold, the gold left inside the thinking --
and any probe that scores above 0 on any example is reported (exit code 1).

Many probes carry the gold answer, so a verifier that checks "does the
answer contain the gold" is caught, not just one that is fooled by junk.
As a sanity check the gold itself is also tried; it is reported, not
counted, because for some tasks (countdown) the gold is not an answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ponder.tasks.base import Example, Task
from ponder.core.verdict import Verdict, invalid

HUGE = 1_000_000  # characters in the "huge answer" probes


def _candidates(gold: str, sep: str, k: int = 200) -> str:
    items = [str(i) for i in range(k)]
    items.insert(k // 2, gold)
    return sep.join(items)


def _other(gold: str) -> str:
    """A plausible wrong answer next to the gold: the next integer, or a different word."""
    try:
        return str(int(gold.strip()) + 1)
    except ValueError:
        return "0" if gold.strip() != "0" else "1"


# name -> completion built from an example. All of them must score 0.
PROBES: dict[str, Callable[[Example], str]] = {
    "empty completion": lambda ex: "",
    "format only": lambda ex: "<think></think>",
    "whitespace answer": lambda ex: "<think></think>  \n\t ",
    "gold only in thinking": lambda ex: f"<think>The answer is {ex.answer}. \\boxed{{{ex.answer}}}</think>",
    "thinking never closed": lambda ex: f"<think>The answer is {ex.answer}. \\boxed{{{ex.answer}}}",
    "gold before thinking": lambda ex: f"{ex.answer}<think></think>",
    "echo the question": lambda ex: f"<think></think>{ex.prompt}",
    "copy the document": lambda ex: f"<think></think>{ex.info.get('document', ex.prompt)}",
    "candidates, spaces": lambda ex: f"<think></think>{_candidates(ex.answer, ' ')}",
    "candidates, commas": lambda ex: f"<think></think>{_candidates(ex.answer, ', ')}",
    "candidates, lines": lambda ex: f"<think></think>{_candidates(ex.answer, chr(10))}",
    "candidates, 0..999": lambda ex: "<think></think>" + " ".join(map(str, range(1000))),
    "candidates in one box": lambda ex: f"<think></think>\\boxed{{{_candidates(ex.answer, ', ')}}}",
    "several boxed answers": lambda ex: f"<think></think>\\boxed{{{_other(ex.answer)}}} \\boxed{{{ex.answer}}}",
    "many boxed answers": lambda ex: "<think></think>" + " ".join(
        f"\\boxed{{{c}}}" for c in _candidates(ex.answer, "\n", 100).split("\n")),
    "gold or another": lambda ex: f"<think></think>{ex.answer} or {_other(ex.answer)}",
    "gold negated": lambda ex: f"<think></think>not {ex.answer}",
    "gold embedded": lambda ex: f"<think></think>9{ex.answer}9",
    "huge junk": lambda ex: "<think></think>" + "x" * HUGE,
    "huge junk then gold": lambda ex: "<think></think>" + "lorem " * (HUGE // 6) + ex.answer,
    "huge power tower": lambda ex: "<think></think>\\boxed{9^{9^{9^9}}}",
    "deeply nested braces": lambda ex: "<think></think>\\boxed{" + "{" * 10_000 + ex.answer + "}" * 10_000 + "}",
}


@dataclass(frozen=True)
class ProbeResult:
    probe: str  # name in PROBES
    example_id: str
    verdict: Verdict
    seconds: float  # time the verifier took

    @property
    def leaked(self) -> bool:
        """The probe earned reward: a hole in the verifier."""
        return self.verdict.score > 0


def _safe_verify(task: Task, completion: str, ex: Example) -> Verdict:
    try:
        return task.verify(completion, ex)
    except Exception as e:  # Task.verify must never raise; if it does, that is a finding, not a crash
        return invalid(f"verify raised {type(e).__name__}: {str(e)[:200]}")


def probe_task(task: Task, n: int = 3, split: str = "test", seed: int = 0,
               probes: dict[str, Callable[[Example], str]] = PROBES) -> list[ProbeResult]:
    """Every probe on `n` examples of `split`; a pure function of the task and its examples."""
    out = []
    for ex in task.examples(split, n, seed):
        for name, make in probes.items():
            t = time.monotonic()
            verdict = _safe_verify(task, make(ex), ex)
            out.append(ProbeResult(name, ex.id, verdict, time.monotonic() - t))
    return out


# A chat model writes no think tags: an unclosed <think> followed by the answer is an answer there.
CHAT_LEGIT = ("thinking never closed",)


def gameable(task: Task, n: int = 3, seed: int = 0) -> list[ProbeResult]:
    """The probes that earn reward on `n` train examples (the ones training would see), checked
    concurrently; empty when the reward cannot be gamed by these."""
    from ponder.verifiers.batch import verify_batch
    skip = CHAT_LEGIT if type(task).__name__ == "ChatTask" else ()
    probes = {name: make for name, make in PROBES.items() if name not in skip}
    pairs = [(name, ex) for ex in task.examples("train", n, seed) for name in probes]
    verdicts = verify_batch(task, [probes[name](ex) for name, ex in pairs], [ex for _, ex in pairs])
    return [ProbeResult(name, ex.id, v, 0.0) for (name, ex), v in zip(pairs, verdicts) if v.score > 0]


def refuse_gameable(task: Task, n: int = 3, seed: int = 0) -> None:
    """ConfigError naming the probes that score above 0 (the reward can be gamed), else nothing."""
    from ponder.core.config import ConfigError
    leaks = gameable(task, n, seed)
    if leaks:
        worst = {}
        for r in leaks:
            worst.setdefault(r.probe, r)
        shown = "; ".join(f"{name!r} scores {r.verdict.score:g} on {r.example_id}" for name, r in list(worst.items())[:4])
        raise ConfigError(f"refusing to train on {task.name}: its grader can be gamed ({shown}). Fix the grader "
                          f"(see `ponder probe`), or pass --trust-grader true (trust_grader = true in a recipe) to train anyway")


def sanity_check(task: Task, n: int = 3, split: str = "test", seed: int = 0) -> list[ProbeResult]:
    """The gold answer itself, as an answer (informational: not every task's gold is an answer)."""
    return [ProbeResult("gold as the answer", ex.id, _safe_verify(task, f"<think></think>{ex.answer}", ex), 0.0)
            for ex in task.examples(split, n, seed)]


def parse_task_args(pairs: list[str]) -> dict:
    """`["max_digits=3", "ops=add"]` -> {"max_digits": 3, "ops": "add"} (ints, floats, bools recognised)."""
    from ponder.core.config import ConfigError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--arg {pair!r} must look like KEY=VALUE")
        out[key.strip()] = _literal(value.strip())
    return out


def _literal(v: str):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main(argv: list[str]) -> int:
    from ponder.tasks.spec import build_task

    p = argparse.ArgumentParser(prog="ponder probe", description=__doc__.split("\n\n")[0])
    p.add_argument("task", help="task name (arithmetic, countdown, rg:<dataset>) or a .jsonl file")
    p.add_argument("--n", type=int, default=3, help="examples to probe [default: 3]")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grader", help="grader for a .jsonl task: a .toml spec or module:function")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="task option, repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object per probe result")
    a = p.parse_args(argv)
    task = build_task(a.task, parse_task_args(a.arg), a.grader or "")
    results = probe_task(task, a.n, a.split, a.seed)
    leaks = [r for r in results if r.leaked]
    if a.json:
        for r in results + sanity_check(task, a.n, a.split, a.seed):
            print(json.dumps({"probe": r.probe, "example": r.example_id, "score": r.verdict.score,
                              "status": r.verdict.status, "reason": r.verdict.reason, "seconds": round(r.seconds, 3)}))
        return 1 if leaks else 0
    worst: dict[str, ProbeResult] = {}
    for r in results:
        if r.probe not in worst or (r.verdict.score, r.seconds) > (worst[r.probe].verdict.score, worst[r.probe].seconds):
            worst[r.probe] = r
    width = max(map(len, worst))
    print(f"{task.name}: {len(PROBES)} probes x {a.n} {a.split} examples")
    for name, r in worst.items():
        flag = "LEAK" if r.leaked else "ok  "
        print(f"  {flag} {name.ljust(width)}  score {r.verdict.score:.3g}  {r.verdict.status:7s}  "
              f"{r.seconds:5.2f}s  {r.verdict.reason[:70]}")
    sane = sanity_check(task, a.n, a.split, a.seed)
    print(f"  gold as the answer: {sum(r.verdict.ok for r in sane)}/{len(sane)} correct (informational)")
    if leaks:
        print(f"{len(leaks)} probe result(s) scored above 0: the verifier can be gamed", file=sys.stderr)
        return 1
    print("no probe scored above 0")
    return 0
