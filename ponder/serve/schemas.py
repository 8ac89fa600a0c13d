"""Request bodies of the two APIs `ponder serve` speaks, as strict pydantic models.

Strict: a wrong type is refused, never coerced ("5" is not an int), so a bad
request fails at once with the field's name; an out-of-range number names its
range, an unknown effort level names the valid ones (pydantic's own messages).
Unknown fields are ignored, as the OpenAI and Anthropic clients send some
(`user`, `metadata`, ...) that change nothing here.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16  # choices per request; more is a batch job, not a chat request
MAX_STOP = 4  # stop strings per request, as in the OpenAI API
EFFORTS = ("none", "minimal", "low", "medium", "high")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None


class ToolSpec(_Strict):
    """A tool a request enables: `{"type": "calculator"}` names one the server runs (`ponder serve
    --tools`), as OpenAI's built-in tools are named by type; a client's function tool (type
    "function", or Anthropic's "custom" / no type) is refused, naming the valid types."""
    type: str | None = None
    name: str | None = None

    @property
    def wanted(self) -> str:
        return "function" if self.type in (None, "custom") else self.type


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """OpenAI Chat Completions, plus `thinking_budget` and `include_reasoning`."""
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    thinking_budget: int | None = Field(None, ge=-1)  # 0 off, N cap, -1 adaptive; wins over reasoning_effort
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)  # the older name of max_completion_tokens
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Union[str, Annotated[list[str], Field(max_length=MAX_STOP)], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    include_reasoning: bool | None = None  # False: reasoning is counted in usage but not returned
    strategy: Literal["vote", "adaptive"] | None = None  # n samples -> one voted answer (ponder.serve.strategy)
    tools: list[ToolSpec] | None = None  # the server's tools this request may call while it thinks


class ThinkingEnabled(_Strict):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=0)  # small budgets are accepted (the API's minimum is 1024)
    display: Literal["summarized", "omitted"] | None = None  # omitted: counted, not returned


class ThinkingDisabled(_Strict):
    type: Literal["disabled"]


class AnthropicMessage(_Strict):
    role: Literal["user", "assistant"]
    content: Union[str, list[TextPart]]


class MessagesRequest(_Strict):
    """Anthropic Messages."""
    model: str
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: Union[str, list[TextPart], None] = None
    thinking: Union[ThinkingEnabled, ThinkingDisabled, None] = Field(None, discriminator="type")
    temperature: float = Field(1.0, ge=0, le=1)
    top_p: float = Field(1.0, gt=0, le=1)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP)
    stream: bool = False
    include_reasoning: bool | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # ponder's extension: same seed, same tokens
    tools: list[ToolSpec] | None = None  # the server's tools this request may call while it thinks


def text_of(content) -> str:
    """A message's content as one string (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)


def stops_of(stop) -> tuple[str, ...]:
    """OpenAI's `stop` (a string or a list) as a tuple of non-empty strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    return tuple(s for s in items if s)


class GeminiPart(_Strict):
    text: str = ""
    thought: bool | None = None


class GeminiContent(_Strict):
    role: Literal["user", "model"] | None = None
    parts: list[GeminiPart] = Field(min_length=1)


class ThinkingConfig(_Strict):
    thinkingBudget: int | None = Field(None, ge=-1)  # 0 off, N cap, -1 dynamic (the default)
    includeThoughts: bool = False  # Gemini returns no thoughts unless asked; they are counted either way


class GenerationConfig(_Strict):
    maxOutputTokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    topP: float = Field(1.0, gt=0, le=1)
    stopSequences: list[str] | None = Field(None, max_length=5)
    candidateCount: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    thinkingConfig: ThinkingConfig | None = None


class GenerateContentRequest(_Strict):
    """Gemini generateContent."""
    contents: list[GeminiContent] = Field(min_length=1)
    systemInstruction: GeminiContent | None = None
    generationConfig: GenerationConfig | None = None
