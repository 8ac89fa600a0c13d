"""Chat models: wrap a task's raw prompts in the model's chat template, and read their answers.

ponder's tasks speak raw text ("12+34=?\\n") and their verifiers read the answer
after `</think>` — the contract the R1-Zero base models learn. An instruct model
(SmolLM2-Instruct, Qwen-Instruct) needs its chat template, and most such
templates have no thinking section. `adapt_task(task, tokenizer, fmt)` returns
a task that:

- renders each prompt as a user message with the tokenizer's template and its
  default system prompt (`chat`) — an equation prompt "12+34=?" is asked as
  "What is 12 + 34?", which SmolLM2-135M-Instruct answers right far more often
  (1-digit sums, greedy: 69% against 38% for the raw form, measured on 16
  held-out problems); `chat_think` adds a system prompt asking for
  `<think>…</think>` first and opens the assistant turn with `<think>`, for
  templates that lack a thinking section;
- rewrites each completion into the inner verifier's form before verifying.
  When the gold answer is a number, the answer is the *last number* of the
  answer part (a small instruct model rarely writes a bare number, but it
  writes the right one last); when the gold is text, the answer part as is.

Why "last number" is not a reward hack: an answer part with more than
`MAX_NUMBERS` numbers in it is refused, so listing candidates does not pay;
and a strict format (`\\boxed{}`) was measured to give SmolLM2-135M zero
reward on every sample, i.e. no gradient at all.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ponder.core.config import ConfigError
from ponder.core.think import THINK_CLOSE, THINK_OPEN, split_thinking
from ponder.tasks.base import Example, Task
from ponder.core.verdict import Verdict, wrong

PROMPT_FORMATS = ("auto", "raw", "chat", "chat_think")
MAX_NUMBERS = 4  # more numbers than this in the answer part reads as guessing
ANSWER_NUMBER = "Answer with just the number."
ANSWER_TEXT = "Answer with just the answer."
THINK_SYSTEM = ("You are a careful assistant. First think step by step inside <think> </think>, "
                "then give the final answer after </think>.")

_EQUATION = re.compile(r"(.+?)=\?")
_OPERATOR = re.compile(r"\s*([+*/]|(?<=\d)-)\s*")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_IS_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def question_of(prompt: str) -> str:
    """A raw task prompt as a question; equations become "What is …?".

    >>> question_of("12+34=?\\n"), question_of("Sort these: 3 1 2")
    ('What is 12 + 34?', 'Sort these: 3 1 2')
    """
    m = _EQUATION.fullmatch(prompt.strip())
    if not m:
        return prompt.strip()
    expr = _OPERATOR.sub(r" \1 ", m.group(1)).strip()
    return f"What is {expr}?"


def numbers_in(text: str) -> list[str]:
    """Numbers in `text`, thousands separators dropped.

    >>> numbers_in("3+4 = 7, or 1,024.")
    ['3', '4', '7', '1024']
    """
    return [m.group().replace(",", "").rstrip(",") for m in _NUMBER.finditer(text)]


def canonical_completion(completion: str, gold: str) -> str | None:
    """The completion rewritten as `<think>…</think>answer` for a task verifier, or None
    when a numeric answer part holds more than MAX_NUMBERS numbers.

    >>> canonical_completion("The sum of 3 and 4 is 7.", "7")
    '<think></think>7'
    >>> canonical_completion("1 2 3 4 5 6", "7") is None
    True
    """
    think, answer = split_thinking(completion)
    if _IS_NUMBER.fullmatch(gold.strip()):
        nums = numbers_in(answer)
        if len(nums) > MAX_NUMBERS:
            return None
        answer = nums[-1] if nums else ""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{answer.strip()}"


class ChatTask(Task):
    """A task whose prompts go through a chat template and whose answers are read leniently."""

    def __init__(self, inner: Task, tokenizer, think: bool = False, system: str | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"prompt_format chat needs a tokenizer with a chat template; "
                              f"{type(tokenizer).__name__} has none (use prompt_format = 'raw')")
        self.inner, self.tok, self.think, self.system = inner, tokenizer, think, system
        # a templated task's prompt is a finished instruction: sent as it is, no rewording
        self.literal = getattr(inner, "literal", False)
        self.name = inner.name

    def render(self, ex: Example) -> str:
        if self.literal:
            content = ex.prompt
        else:
            instruction = ANSWER_NUMBER if _IS_NUMBER.fullmatch(ex.answer.strip()) else ANSWER_TEXT
            content = f"{question_of(ex.prompt)} {instruction}"
        messages = [{"role": "user", "content": content}]
        # otherwise the template's own default system prompt, which the model was tuned with
        system = self.system or (THINK_SYSTEM if self.think else None)
        if system:
            messages.insert(0, {"role": "system", "content": system})
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + (THINK_OPEN + "\n" if self.think else "")

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        return [replace(ex, prompt=self.render(ex)) for ex in self.inner.examples(split, n, seed)]

    def verify(self, completion: str, example: Example) -> Verdict:
        # With chat_think the prompt opened <think>; the completion continues inside it.
        text = (THINK_OPEN + completion) if self.think else completion
        canon = canonical_completion(text, example.answer)
        if canon is None:
            return wrong(f"more than {MAX_NUMBERS} numbers in the answer: reads as guessing")
        return self.inner.verify(canon, example)


def adapt_task(task: Task, tokenizer, fmt: str, system: str | None = None) -> Task:
    """`raw`: the task unchanged; `chat` / `chat_think`: wrapped; `auto`: chat when the
    tokenizer has a chat template (instruct models), raw otherwise (base models, tiny)."""
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"prompt_format {fmt!r} is not valid; choose one of: {', '.join(PROMPT_FORMATS)}")
    if fmt == "auto":
        fmt = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if fmt == "raw":
        return task
    return ChatTask(task, tokenizer, think=fmt == "chat_think", system=system)
