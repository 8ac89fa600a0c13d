"""Thinking budgets: effort levels, and the per-row budget forcing the engine applies.

A thinking budget (`SamplingParams.thinking_budget`) says how many tokens a
completion may spend between `<think>` and `</think>`:

- None: the engine does not intervene (the model's own behaviour, as trained);
- 0: no thinking — the completion is forced to open with `<think></think>`;
- N > 0: at N thinking tokens the engine forces `</think>` (plus the answer
  prefix, if the task has one): s1's "budget forcing" cap;
- -1: adaptive — the model decides, capped only so the answer keeps its room.

Whenever a budget is set, `answer_reserve` tokens of the row's limit are kept
for the answer, so thinking can never eat max_new_tokens, and EOS is refused
until the answer has at least one token: the answer is never empty.
`min_thinking` is s1's other half: an early `</think>` (or EOS) is replaced by
`wait_text` ("Wait") so the model keeps thinking.

`ThinkingForcer` is the per-row state machine: the engine feeds it each
sampled token and feeds back to the model whatever it returns. Its state
depends on the row's own tokens only, so batched sampling still equals
one-by-one sampling.
"""

from __future__ import annotations

import math
from collections import deque

from ponder.core.config import ConfigError

# Effort level -> thinking budget, in one place. Sized for the built-in tiny
# model, whose full column method for a 5-digit problem takes ~90 tokens:
# `low` fits one or two column steps, `medium` most problems, `high` lets
# the model decide (adaptive).
# `minimal` is a token or two of thinking (the OpenAI/Anthropic APIs' lowest
# level above none; `ponder serve` maps its `none` to budget 0).
EFFORT: dict[str, int] = {"minimal": 4, "low": 16, "medium": 64, "high": -1}
ADAPTIVE = -1
OVERHEAD = 2  # the `<think>` and `</think>` tokens around the thinking
ANSWER_RESERVE = 16  # default tokens of a row's limit kept for the answer (`SamplingParams.answer_reserve`)


def effort_budget(effort: str) -> int:
    """The thinking budget of an effort level.

    >>> effort_budget("medium")
    64
    """
    if effort not in EFFORT:
        raise ConfigError(f"unknown effort {effort!r}; valid effort levels: "
                          + ", ".join(f"{k} (budget {v})" for k, v in EFFORT.items()))
    return EFFORT[effort]


def parse_budgets(text: str, max_new_tokens: int) -> list[int | None]:
    """'none,0,64,low' -> [None, 0, 64, 16]: distinct budgets, each checked against max_new_tokens."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item == "none":
            out.append(None)
            continue
        budget = effort_budget(item) if item in EFFORT or not item.lstrip("-").isdigit() else int(item)
        check_budget(budget, 0, ANSWER_RESERVE, max_new_tokens)  # range check, with the valid values in the error
        out.append(budget)
    if not out:
        raise ConfigError("budgets is empty; give e.g. 'none' or 'none,0,32,-1'")
    if len(set(out)) != len(out):
        raise ConfigError(f"budgets must be distinct, got {text!r}")
    return out


def check_budget(thinking_budget: int | None, min_thinking: int, answer_reserve: int, max_new_tokens: int) -> None:
    """Raise ConfigError, naming the valid range, for a budget that cannot be honoured."""
    hi = max_new_tokens - answer_reserve - OVERHEAD
    if answer_reserve < 1 or hi < 0:
        raise ConfigError(f"answer_reserve {answer_reserve} is out of range; valid values: 1.."
                          f"{max_new_tokens - OVERHEAD} for max_new_tokens={max_new_tokens} "
                          f"(room for <think></think> and the answer)")
    if thinking_budget is not None and not (thinking_budget == ADAPTIVE or 0 <= thinking_budget <= hi):
        raise ConfigError(f"thinking_budget {thinking_budget} is out of range; valid values: none (no control), "
                          f"-1 (adaptive), 0 (no thinking) or 1..{hi} tokens (max_new_tokens {max_new_tokens} "
                          f"minus answer_reserve {answer_reserve} minus 2), or an effort level: {', '.join(EFFORT)}")
    cap = hi if thinking_budget in (None, ADAPTIVE) else thinking_budget
    if not 0 <= min_thinking <= cap:
        raise ConfigError(f"min_thinking {min_thinking} is out of range; valid values: 0..{cap} "
                          f"(at most the thinking budget)")


def row_cap(thinking_budget: int, limit: int, answer_reserve: int, prefix_len: int, opened: bool) -> int:
    """Most thinking tokens a row with token `limit` may spend and still fit its answer.

    >>> row_cap(100, 64, 8, 0, False)  # 64 - <think> - </think> - 8 reserved
    54
    >>> row_cap(-1, 64, 8, 3, True)  # <think> is in the prompt; 3 prefix tokens
    52
    """
    room = limit - (0 if opened else 1) - 1 - prefix_len - answer_reserve
    budget = math.inf if thinking_budget == ADAPTIVE else thinking_budget
    return int(max(0, min(budget, room)))


class ThinkingForcer:
    """One row's budget forcing; `next(sampled)` returns the token to emit instead.

    Phases: "start" (before `<think>`), "think", "answer". Forced tokens wait
    in `queue` and take precedence over sampling.
    """

    def __init__(self, open_id: int, close_id: int, eos_id: int, cap: int, min_thinking: int,
                 wait_ids: list[int], prefix_ids: list[int], opened: bool):
        self.open_id, self.close_id, self.eos_id = open_id, close_id, eos_id
        self.cap, self.min_thinking = cap, min(min_thinking, cap)
        self.wait_ids, self.prefix_ids = list(wait_ids), list(prefix_ids)
        self.queue: deque[int] = deque()
        self.phase = "start"
        self.thought = 0  # thinking tokens emitted
        self.answered = 0  # answer tokens emitted after the prefix
        if opened:
            self._enter_thinking()

    def banned(self) -> tuple[int, ...]:
        """Tokens the row must not sample next.

        In the answer: EOS before the first answer token (the answer would be
        empty), and `<think>`/`</think>` (a second block would leave nothing
        after the last `</think>`). An EOS sampled while thinking is turned
        into `</think>` instead, so nothing is banned there.
        """
        if self.phase != "answer":
            return ()
        return (self.open_id, self.close_id, self.eos_id) if self.answered == 0 else (self.open_id, self.close_id)

    def _enter_thinking(self) -> None:
        self.phase = "think"
        if self.cap == 0:
            self.queue.extend([self.close_id] + self.prefix_ids)

    def next(self, sampled: int) -> int:
        forced = bool(self.queue)
        tk = self.queue.popleft() if forced else sampled
        if self.phase == "start":
            self._enter_thinking()
            return self.open_id  # the template opens the thinking, whatever was sampled
        if self.phase == "think":
            if tk in (self.close_id, self.eos_id):
                if not forced and self.thought < self.min_thinking and self.thought + len(self.wait_ids) <= self.cap:
                    # s1: an early end of thinking becomes "Wait"; the model goes on.
                    self.queue.extend(self.wait_ids[1:])
                    tk = self.wait_ids[0]
                else:
                    self.phase = "answer"
                    if not forced:
                        self.queue.extend(self.prefix_ids)
                    return self.close_id
            self.thought += 1
            if self.thought >= self.cap and not self.queue:
                self.queue.extend([self.close_id] + self.prefix_ids)
            return tk
        if not forced:
            self.answered += 1
        return tk
