"""An example: what a task hands the model and its verifier (the data contract between them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Example:
    id: str  # stable id, unique within a task
    prompt: str  # what the model sees
    answer: str  # gold answer, as text
    difficulty: int = 1  # task-specific level, higher is harder
    info: Mapping[str, Any] = field(default_factory=dict)  # task-specific data
    # a worked gold completion (thinking, tool calls with their outputs, then the answer) that
    # SFT on gold answers trains on instead of the bare answer; empty = the answer alone
    solution: str = ""
