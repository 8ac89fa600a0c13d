"""Anthropic Messages (`/v1/messages`).

`thinking: {type: enabled, budget_tokens: N}` caps the thinking at N tokens
(small budgets are accepted: the built-in model thinks in tens of tokens),
`{type: disabled}` or no `thinking` means no thinking, as in the Anthropic API.
The response holds a `thinking` block before the `text` block; streaming sends
message_start, then per block content_block_start / _delta (thinking_delta,
then text_delta) / _stop, then message_delta (stop reason, usage) and
message_stop. `usage.output_tokens` counts thinking and answer;
`usage.output_tokens_details.thinking_tokens` the thinking alone (the tokens
between `<think>` and `</think>`, the count a budget caps).
`thinking.display: omitted` hides the thinking (counted, not returned). `seed`
(ponder's extension, sent by clients as an extra body field) makes a reply reproducible.
`tools: [{"type": "calculator"}]` enables the server's tools (`ponder serve --tools`)
inside the thinking, which then runs without a budget (so `thinking` must be left out).
"""

from __future__ import annotations

import json
import uuid

from fastapi import APIRouter, Request

from ponder.serve.reasoning import RequestError, shown_reasoning, split_completion, summarize
from ponder.serve.schemas import MessagesRequest, text_of
from ponder.serve.sse import JobStream
from ponder.serve.service import Plan, Service

router = APIRouter()


def plan_messages(svc: Service, body: MessagesRequest) -> Plan:
    svc.check_model(body.model)
    tools = svc.tool_tags([t.wanted for t in body.tools or ()])
    if tools and body.thinking is not None:
        raise RequestError("thinking", "thinking with tools is not supported yet (a budget would count each "
                                       "stretch between tool calls); valid: leave thinking out when tools are "
                                       "enabled (the thinking then runs free)")
    budget = body.thinking.budget_tokens if body.thinking is not None and body.thinking.type == "enabled" else 0
    messages = [(m.role, text_of(m.content)) for m in body.messages]
    if body.system:
        messages.insert(0, ("system", text_of(body.system)))
    stops = tuple(s for s in body.stop_sequences or () if s)
    omitted = body.thinking is not None and getattr(body.thinking, "display", None) == "omitted"
    return svc.plan(messages, budget, body.max_tokens, "max_tokens", body.temperature, body.top_p, stops, 1,
                    body.seed, False if omitted else body.include_reasoning, tools)


def stop_reason(sample, stops: tuple[str, ...]) -> tuple[str, str | None]:
    if sample.finish == "length":
        return "max_tokens", None
    if sample.finish == "stop":
        return "stop_sequence", next((s for s in stops if sample.text.endswith(s)), None)
    return "end_turn", None


def usage_of(prompt_tokens: int, sample) -> dict:
    return {"input_tokens": prompt_tokens, "output_tokens": len(sample.ids),
            "output_tokens_details": {"thinking_tokens": sample.thinking_tokens}}


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request):
    svc: Service = request.app.state.service
    plan = plan_messages(svc, body)
    svc.submit(plan)
    msg_id = f"msg_{uuid.uuid4().hex}"
    if body.stream:
        return JobStream(_events(svc, plan, msg_id), svc.dropper(plan))
    samples = await svc.results(plan, request.is_disconnected)
    if not samples:
        return {}
    (s,) = samples
    split = split_completion(s.text, plan.opened, True, plan.stops, s.finish == "stop")
    content = []
    shown = shown_reasoning(plan.reasoning, split.thinking, s.thinking_tokens)
    if shown:
        content.append({"type": "thinking", "thinking": shown, "signature": ""})
    content.append({"type": "text", "text": split.answer})
    reason, seq = stop_reason(s, plan.stops)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": svc.name, "content": content,
            "stop_reason": reason, "stop_sequence": seq, "usage": usage_of(len(plan.job.prompt_ids), s)}


def _event(kind: str, **data) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


class _Blocks:
    """Opens and closes content blocks in order: thinking (if any) first, then text."""

    def __init__(self):
        self.index, self.open, self.had_text = -1, None, False

    def ensure(self, kind: str) -> list[str]:
        if self.open == kind:
            return []
        out = self.close()
        self.index, self.open = self.index + 1, kind
        self.had_text = self.had_text or kind == "text"
        block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
        return out + [_event("content_block_start", index=self.index, content_block=block)]

    def close(self) -> list[str]:
        if self.open is None:
            return []
        out = []
        if self.open == "thinking":
            out.append(_event("content_block_delta", index=self.index, delta={"type": "signature_delta", "signature": ""}))
        self.open = None
        return out + [_event("content_block_stop", index=self.index)]

    def delta(self, kind: str, text: str) -> list[str]:
        if kind == "thinking":
            return self.ensure(kind) + [_event("content_block_delta", index=self.index,
                                               delta={"type": "thinking_delta", "thinking": text})]
        return self.ensure(kind) + [_event("content_block_delta", index=self.index,
                                           delta={"type": "text_delta", "text": text})]


async def _events(svc: Service, plan: Plan, msg_id: str):
    n_prompt = len(plan.job.prompt_ids)
    async with svc.streaming(plan) as batches:  # a hang-up anywhere in here drops the job
        yield _event("message_start", message={
            "id": msg_id, "type": "message", "role": "assistant", "model": svc.name, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": n_prompt, "output_tokens": 0}})
        blocks, summarized, sample = _Blocks(), False, None
        try:
            async for deltas in batches:
                out = []  # the events of one batch in one write
                for d in deltas:
                    if plan.reasoning == "visible" and d.reasoning:
                        out += blocks.delta("thinking", d.reasoning)
                    elif plan.reasoning == "summary" and d.thinking_done and not summarized:
                        summarized = True
                        if d.thinking:
                            out += blocks.delta("thinking", summarize(d.thinking, d.thinking_tokens))
                    if d.content or (d.sample is not None and not blocks.had_text):  # a text block, even if empty
                        out += blocks.delta("text", d.content)
                    sample = d.sample or sample
                if out:
                    yield "".join(out)
        except Exception as e:  # the status is already sent: report the failure as an error event
            yield _event("error", error={"type": "api_error", "message": str(e)})
            return
    reason, seq = stop_reason(sample, plan.stops)
    yield "".join(blocks.close() + [_event("message_delta", delta={"stop_reason": reason, "stop_sequence": seq},
                                           usage=usage_of(n_prompt, sample)), _event("message_stop")])
