"""The synthetic pretraining corpus for the built-in tiny base.

Every document is a problem from the training split and a *correct*
solution in one of three styles, drawn independently of the problem:

- direct:  `<think></think>105` — the answer with no work shown;
- partial: the first k column steps, then the answer;
- full:    every column step, sometimes followed by a self-check line;
- calc:    (only when `p_calc` > 0: the tool corpus, not the shipped base's) one
  calculator call for the whole problem, `<think><calc>48+57</calc><output>105</output></think>105`
  -- the output is the calculator's own (`ponder.verifiers.tools.calculate`), so it is correct.

Nothing here is wrong or misleading: the base ends up weak only because,
without the scratch work, multi-digit answers are hard for a model this
small. Whether to think, and how much, is left for RL to discover -- and,
in the tool corpus, whether to call the calculator. With `p_calc` = 0 (the
default) no extra random draw is made, so the shipped corpus is unchanged
bit for bit (tested).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.core.config import ConfigError, option
from ponder.verifiers.tools import OUTPUT_CLOSE, OUTPUT_OPEN, calculate
from ponder.tasks.arithmetic import SYMBOL, Problem, column_steps, prompt_of, sample_problem
from ponder.tasks.base import split_of


@dataclass(frozen=True)
class CorpusMix:
    p_direct: float = option(0.55, "share of solutions that answer with no work shown")
    p_partial: float = option(0.25, "share that show the first k column steps (k < digits)")
    p_check: float = option(0.5, "share of full solutions that end with a self-check line")
    min_digits: int = option(1, "fewest digits in a corpus problem")
    max_digits: int = option(5, "most digits in a corpus problem")
    p_calc: float = option(0.0, "share of solutions that call the calculator for the whole problem, drawn "
                           "before the other styles (the tool corpus); 0 = the shipped corpus, bit for bit")

    def __post_init__(self):
        if not (0 <= self.p_direct and 0 <= self.p_partial and self.p_direct + self.p_partial <= 1):
            raise ConfigError(f"p_direct={self.p_direct} and p_partial={self.p_partial} must be >= 0 and sum to <= 1")
        if not (0 <= self.p_check <= 1):
            raise ConfigError(f"p_check={self.p_check} must be in [0, 1]")
        if not (0 <= self.p_calc <= 1):
            raise ConfigError(f"p_calc={self.p_calc} must be in [0, 1]")


def check_line(p: Problem) -> str:
    """Re-derive the result the other way round (the operands swapped).

    >>> check_line(Problem("add", 48, 57))
    'check: 57+48=105'
    """
    return f"check: {p.b}{SYMBOL[p.op]}{p.a}={p.result}"


def solution(p: Problem, style: str, k: int = 0, check: bool = False) -> str:
    """A completion (what follows the prompt) in one of the three styles.

    >>> solution(Problem("add", 48, 57), "direct")
    '<think></think>105'
    >>> solution(Problem("add", 48, 57), "partial", k=1)
    '<think>8+7=15 so 5\\n</think>105'
    >>> solution(Problem("mul", 36, 7), "calc")
    '<think><calc>36*7</calc><output>252</output></think>252'
    """
    if style == "calc":
        expression = f"{p.a}{SYMBOL[p.op]}{p.b}"
        return f"<think><calc>{expression}</calc>{OUTPUT_OPEN}{calculate(expression)}{OUTPUT_CLOSE}</think>{p.result}"
    steps = column_steps(p)
    if style == "direct":
        lines = []
    elif style == "partial":
        lines = steps[:k]
    elif style == "full":
        lines = steps + ([check_line(p)] if check else [])
    else:
        raise ValueError(f"unknown style {style!r}; valid: direct, partial, full, calc")
    body = "".join(line + "\n" for line in lines)
    return f"<think>{body}</think>{p.result}"


def document(p: Problem, rng: random.Random, mix: CorpusMix) -> str:
    """Prompt plus a solution whose style is drawn from `mix`."""
    if mix.p_calc > 0 and rng.random() < mix.p_calc:  # no draw at all when p_calc = 0: the shipped stream
        return prompt_of(p) + solution(p, "calc")
    u = rng.random()
    n = len(column_steps(p))
    if u < mix.p_direct or (u < mix.p_direct + mix.p_partial and n == 1):
        text = solution(p, "direct")
    elif u < mix.p_direct + mix.p_partial:
        text = solution(p, "partial", k=rng.randint(1, n - 1))
    else:
        text = solution(p, "full", check=rng.random() < mix.p_check)
    return prompt_of(p) + text


def documents(mix: CorpusMix, seed: int):
    """An endless stream of training-split documents, deterministic in `seed`."""
    rng = random.Random(f"corpus/{seed}")
    while True:
        p = sample_problem(rng, ("add", "mul"), rng.randint(mix.min_digits, mix.max_digits))
        if split_of(p.text) == "train":
            yield document(p, rng, mix)
