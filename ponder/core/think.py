"""The think format: `<think>` reasoning `</think>` answer.

The one place that knows the tags and how a completion splits into its thinking
and its answer; tasks, verifiers, metrics, the engine's budgets and the server
all read completions through these functions.
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def answer_text(completion: str) -> str | None:
    """The answer part of a completion: the text after the last `</think>`.

    Returns None when the completion never closed its thinking.

    >>> answer_text("<think>2+2=4</think>4")
    '4'
    >>> answer_text("<think>still thinking") is None
    True
    """
    i = completion.rfind(THINK_CLOSE)
    if i < 0:
        return None
    return completion[i + len(THINK_CLOSE):].strip()


def thinking_text(completion: str) -> str:
    """The text between the first `<think>` and the following `</think>` (or the end)."""
    i = completion.find(THINK_OPEN)
    if i < 0:
        return ""
    j = completion.find(THINK_CLOSE, i)
    return completion[i + len(THINK_OPEN): j if j >= 0 else len(completion)]


_FORMAT = re.compile(r"^\s*<think>(?:(?!<think>|</think>).)*</think>\s*\S(?:(?!<think>|</think>).)*$", re.S)


def format_score(completion: str) -> float:
    """1.0 for exactly one `<think>…</think>` block followed by a non-empty answer.

    >>> format_score("<think>a</think>42"), format_score("42"), format_score("<think>a</think>")
    (1.0, 0.0, 0.0)
    """
    return 1.0 if _FORMAT.match(completion) else 0.0


def split_thinking(completion: str) -> tuple[str, str]:
    """(thinking, answer part): the answer part is what follows the last `</think>`,
    or the whole completion when it never thinks.

    >>> split_thinking("<think>3+4</think> 7"), split_thinking("7")
    (('3+4', ' 7'), ('', '7'))
    """
    i = completion.rfind(THINK_CLOSE)
    if i < 0:
        return "", completion
    think = completion[:i]
    j = think.find(THINK_OPEN)
    return think[j + len(THINK_OPEN):] if j >= 0 else think, completion[i + len(THINK_CLOSE):]
