"""Countdown: reach a target with the given numbers and + - * /.

Each given number must be used exactly once (the TinyZero rules). The
verifier parses the answer with `ast` and walks only number literals and the
four operators, computing with exact fractions: it never calls `eval`, so an
answer cannot run code, and `2**99999`-style blow-ups are not even parsed
(`**` is not an allowed operator).
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from fractions import Fraction

from ponder.core.config import ConfigError
from ponder.core.think import answer_text
from ponder.tasks.base import Example, Task, check_split, split_of
from ponder.core.verdict import Verdict, correct, wrong

MAX_ANSWER_CHARS = 200  # a real answer is short; anything longer is refused before parsing
_OPS = {ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y,
        ast.Mult: lambda x, y: x * y, ast.Div: lambda x, y: x / y}


class ExpressionError(ValueError):
    pass


def evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """Value of an arithmetic expression and the integer literals it used.

    >>> evaluate("(25-3)*2")
    (Fraction(44, 1), [25, 3, 2])
    >>> try: evaluate("__import__('os')")
    ... except ExpressionError as e: print(e)
    not allowed in an answer: Call
    """
    if len(expr) > MAX_ANSWER_CHARS:
        raise ExpressionError(f"answer longer than {MAX_ANSWER_CHARS} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"not an expression: {e.msg}") from None
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ExpressionError("division by zero")
            return _OPS[type(node.op)](left, right)
        raise ExpressionError(f"not allowed in an answer: {type(node).__name__}")

    return walk(tree), used


def _random_expression(rng: random.Random, numbers: list[int]) -> tuple[str, Fraction]:
    """Combine the numbers in random order with random operators into one expression."""
    items = [(str(n), Fraction(n)) for n in numbers]
    rng.shuffle(items)
    while len(items) > 1:
        (ea, va), (eb, vb) = items.pop(), items.pop()
        choices = ["+", "*"] + (["-"] if va > vb else []) + (["/"] if vb != 0 and (va / vb).denominator == 1 else [])
        op = rng.choice(choices)
        value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else va}[op]
        items.append((f"({ea}{op}{eb})", value))
    return items[0]


class CountdownTask(Task):
    name = "countdown"

    def __init__(self, min_numbers: int = 3, max_numbers: int = 4, max_number: int = 25, max_target: int = 200):
        if not (2 <= min_numbers <= max_numbers <= 6):
            raise ConfigError(f"countdown needs 2 <= min_numbers <= max_numbers <= 6, got {min_numbers}, {max_numbers}")
        if max_number < 2 or max_target < 1:
            raise ConfigError(f"countdown max_number must be >= 2 and max_target >= 1, got {max_number}, {max_target}")
        self.min_numbers, self.max_numbers = min_numbers, max_numbers
        self.max_number, self.max_target = max_number, max_target

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        check_split(split)
        rng = random.Random(f"countdown/{split}/{seed}")
        out, seen, tries = [], set(), 0
        while len(out) < n:
            tries += 1
            if tries > 200 * n + 1000:
                raise ConfigError(f"cannot draw {n} distinct countdown {split} problems; ask for fewer")
            k = rng.randint(self.min_numbers, self.max_numbers)
            numbers = [rng.randint(1, self.max_number) for _ in range(k)]
            expr, value = _random_expression(rng, numbers)
            if value.denominator != 1 or not (1 <= value <= self.max_target):
                continue
            key = f"{sorted(numbers)}->{int(value)}"
            if split_of(key) != split or key in seen:
                continue
            seen.add(key)
            nums = " ".join(map(str, numbers))
            out.append(Example(
                id=key, prompt=f"Use {nums} to make {int(value)}.\n", answer=str(int(value)),
                difficulty=k, info={"numbers": numbers, "target": int(value), "solution": expr},
            ))
        return out

    def verify(self, completion: str, example: Example) -> Verdict:
        ans = answer_text(completion)
        if not ans:
            return wrong("no expression after </think>")
        expr = ans.split("=")[0]  # "…=46" is fine; the value is checked below
        try:
            value, used = evaluate(expr)
        except ExpressionError as e:
            return wrong(str(e))
        numbers = list(example.info["numbers"])
        if Counter(used) != Counter(numbers):
            return wrong(f"used {sorted(used)}, must use each of {sorted(numbers)} exactly once")
        if value != example.info["target"]:
            return wrong(f"expression equals {value}, target is {example.info['target']}")
        return correct()
