"""Thinking on the wire: budgets from API fields, thinking/answer split (also mid-stream), summaries.

A completion of a thinking model reads `<think>…</think>answer`; the APIs
return the thinking apart from the answer (OpenAI `message.reasoning`,
Anthropic `thinking` blocks). While streaming, the split must never emit a
character it will later take back: a trailing piece that could still become
a `</think>` tag or a stop string is held back until the next tokens (or the
end) decide it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ponder.core.config import ConfigError
from ponder.engine.budget import ANSWER_RESERVE, EFFORT, OVERHEAD
from ponder.engine.engine import SamplingParams
from ponder.core.think import THINK_CLOSE, THINK_OPEN

REASONING_MODES = ("visible", "hidden", "summary")
STEP_CHARS = 80  # a summary quotes at most this much of a step


class RequestError(ValueError):
    """A request the server refuses; `param` names the field, the message the valid values."""

    def __init__(self, param: str | None, message: str, status: int = 400, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.param, self.status, self.kind, self.headers = param, status, kind, headers


def effort_to_budget(effort: str) -> int:
    """An API effort level as a thinking budget: `none` is no thinking, the rest `budget.EFFORT`."""
    return 0 if effort == "none" else EFFORT[effort]


def sampling_params(budget: int | None, limit: int, temperature: float, top_p: float,
                    stop: tuple[str, ...], limit_field: str) -> SamplingParams:
    """Engine parameters for a request of `limit` tokens (thinking + answer).

    With a budget, room is kept for the answer (a quarter of the limit, at most the
    engine's default reserve) and the budget is clipped to what fits, so the
    thinking can never eat the limit and the answer is never empty; the reasoning
    tokens then stay <= the budget asked for. `budget` None: the model has no
    thinking tokens, nothing is forced.
    """
    if budget is None:
        return SamplingParams(limit, temperature, top_p, stop)
    reserve = min(ANSWER_RESERVE, max(1, limit // 4))
    room = limit - reserve - OVERHEAD
    if room < 0:
        raise RequestError(limit_field, f"{limit_field} {limit} is too small; valid values: >= {OVERHEAD + 1} "
                                        f"(<think>, </think> and at least one answer token)")
    budget = budget if budget == -1 else min(budget, room)
    try:
        return SamplingParams(limit, temperature, top_p, stop, thinking_budget=budget, answer_reserve=reserve)
    except ConfigError as e:  # pragma: no cover - the clipping above keeps it in range
        raise RequestError(limit_field, str(e)) from None


@dataclass(frozen=True)
class Split:
    thinking: str
    answer: str
    thinking_done: bool  # `</think>` seen, or the completion does not think at all


def _held_back(text: str, patterns: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `patterns`."""
    best = 0
    for p in patterns:
        for k in range(min(len(p) - 1, len(text)), best, -1):
            if text.endswith(p[:k]):
                best = k
                break
    return best


def split_completion(text: str, opened: bool, final: bool, stops: tuple[str, ...] = (),
                     stopped: bool = False) -> Split:
    """Thinking and answer of a (partial) completion.

    opened: the prompt already opened `<think>`. final: no more tokens come;
    stopped: it ended on one of `stops`, which is cut off (APIs never return it).
    """
    if stopped:
        hit = [s for s in stops if text.endswith(s)]
        text = text[:len(text) - max(map(len, hit))] if hit else text
    elif not final:
        text = text[:len(text) - _held_back(text, stops + (THINK_OPEN, THINK_CLOSE))]
    start = 0
    if not opened:
        body = text.lstrip()
        if not body.startswith(THINK_OPEN):
            if not final and THINK_OPEN.startswith(body):  # too early to tell
                return Split("", "", False)
            return Split("", body if body or not final else text, True)
        start = len(text) - len(body) + len(THINK_OPEN)
    end = text.find(THINK_CLOSE, start)
    if end < 0:
        return Split(text[start:], "", final)
    rest = text[end + len(THINK_CLOSE):]
    # Leading blank space is dropped, unless it is all the answer has (an answer is never empty).
    return Split(text[start:end], rest.lstrip() if rest.strip() or not final else rest, True)


class StreamSplit:
    """Turns a growing completion into reasoning and content deltas."""

    def __init__(self, opened: bool, stops: tuple[str, ...]):
        self.opened, self.stops = opened, stops
        self.thinking, self.answer = "", ""
        self.thinking_done = False

    def feed(self, text: str, final: bool = False, stopped: bool = False) -> tuple[str, str]:
        """(new reasoning, new content) since the last call."""
        s = split_completion(text, self.opened, final, self.stops, stopped)
        # Held-back text only ever grows into what comes next, so each part extends the last.
        dr, dc = s.thinking[len(self.thinking):], s.answer[len(self.answer):]
        self.thinking, self.answer = s.thinking, s.answer
        self.thinking_done = s.thinking_done
        return dr, dc


def summarize(thinking: str, tokens: int) -> str:
    """A short account of a thinking: how long, how many steps, the first and last step."""
    steps = [line.strip() for line in thinking.splitlines() if line.strip()]
    if not steps:
        return f"Thought for {tokens} tokens."
    cut = lambda s: s if len(s) <= STEP_CHARS else s[:STEP_CHARS - 3] + "..."
    if len(steps) == 1:
        return f"Thought for {tokens} tokens in 1 step: {cut(steps[0])}"
    return (f"Thought for {tokens} tokens in {len(steps)} steps. "
            f"First: {cut(steps[0])} Last: {cut(steps[-1])}")


def shown_reasoning(mode: str, thinking: str, tokens: int) -> str | None:
    """What a response carries as reasoning under `mode` (None: nothing)."""
    if mode == "hidden":
        return None
    return summarize(thinking, tokens) if mode == "summary" else thinking
