"""Multi-digit arithmetic: n-digit + n-digit, and n-digit × 1-digit.

Difficulty is the number of digits. Answering in one shot gets hard fast for
a small model; writing the column method out digit by digit (right to left,
with carries) inside `<think>` keeps every step easy. That gap is what RL on
the chain of thought can discover.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ponder.core.config import ConfigError
from ponder.core.think import answer_text
from ponder.tasks.base import Example, Task, check_split, split_of
from ponder.core.verdict import Verdict, correct, wrong

OPS = ("add", "mul")
SYMBOL = {"add": "+", "mul": "*"}
MAX_DIGITS = 9

_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    op: str
    a: int
    b: int

    @property
    def text(self) -> str:
        return f"{self.a}{SYMBOL[self.op]}{self.b}"

    @property
    def result(self) -> int:
        return self.a + self.b if self.op == "add" else self.a * self.b

    @property
    def digits(self) -> int:
        return len(str(self.a))


def column_steps(p: Problem) -> list[str]:
    """The column method, one line per digit of `a`, right to left.

    Each line shows the digit operation with the carry and the result so far,
    so the final line ends with the full answer.

    >>> column_steps(Problem("add", 48, 57))
    ['8+7=15 so 5', '4+5+1=10 so 105']
    >>> column_steps(Problem("mul", 36, 7))
    ['6*7=42 so 2', '3*7+4=25 so 252']
    """
    width = max(len(str(p.a)), len(str(p.b))) if p.op == "add" else len(str(p.a))
    da = str(p.a).zfill(width)[::-1]
    db = str(p.b).zfill(width)[::-1] if p.op == "add" else None
    sym = SYMBOL[p.op]
    carry, partial, lines = 0, "", []
    for i, ch in enumerate(da):
        x = int(ch)
        y = int(db[i]) if db is not None else p.b
        s = (x + y if p.op == "add" else x * y) + carry
        last = i == len(da) - 1
        partial = (str(s) if last else str(s % 10)) + partial
        lines.append(f"{x}{sym}{y}{f'+{carry}' if carry else ''}={s} so {partial}")
        carry = s // 10
    return lines


def sample_problem(rng: random.Random, ops: tuple[str, ...], digits: int) -> Problem:
    op = rng.choice(ops)
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    a = rng.randint(lo, hi)
    b = rng.randint(lo, hi) if op == "add" else rng.randint(2, 9)
    return Problem(op, a, b)


def prompt_of(p: Problem) -> str:
    return f"{p.text}=?\n"


def parse_int_answer(completion: str) -> int | None:
    """The integer answer after `</think>`, or None if absent or not a single integer.

    >>> parse_int_answer("<think>x</think>105"), parse_int_answer("<think>x</think>1 2")
    (105, None)
    """
    ans = answer_text(completion)
    if ans is None:
        return None
    ans = ans.replace(",", "").strip()
    if not _INT.fullmatch(ans):
        return None
    return int(ans)


class ArithmeticTask(Task):
    name = "arithmetic"

    def __init__(self, ops: tuple[str, ...] | str = OPS, min_digits: int = 1, max_digits: int = 5):
        if isinstance(ops, str):
            ops = tuple(o.strip() for o in ops.split(",") if o.strip())
        bad = [o for o in ops if o not in OPS]
        if bad or not ops:
            raise ConfigError(f"arithmetic ops {list(ops)!r} invalid; valid ops: {', '.join(OPS)}")
        if not (1 <= min_digits <= max_digits <= MAX_DIGITS):
            raise ConfigError(
                f"arithmetic digits must satisfy 1 <= min_digits <= max_digits <= {MAX_DIGITS}, "
                f"got min_digits={min_digits}, max_digits={max_digits}"
            )
        self.ops, self.min_digits, self.max_digits = tuple(ops), min_digits, max_digits

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        rng = random.Random(f"arithmetic/{split}/{seed}")
        out, seen, tries = [], set(), 0
        while len(out) < n:
            tries += 1
            if tries > 100 * n + 1000:
                raise ConfigError(f"cannot draw {n} distinct {split} problems with digits "
                                  f"{self.min_digits}..{self.max_digits}; ask for fewer")
            p = sample_problem(rng, self.ops, rng.randint(self.min_digits, self.max_digits))
            if split_of(p.text) != split or p.text in seen:
                continue
            seen.add(p.text)
            out.append(p)
        return out

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        return [
            Example(id=f"{p.op}:{p.text}", prompt=prompt_of(p), answer=str(p.result),
                    difficulty=p.digits, info={"op": p.op, "a": p.a, "b": p.b})
            for p in self.problems(split, n, seed)
        ]

    def verify(self, completion: str, example: Example) -> Verdict:
        got = parse_int_answer(completion)
        if got is None:
            return wrong("no single integer after </think>")
        if str(got) == example.answer:
            return correct()
        return wrong(f"answered {got}, expected {example.answer}")
