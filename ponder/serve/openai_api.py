"""OpenAI Chat Completions (`/v1/chat/completions`) and `/v1/models`.

Reasoning comes back as `message.reasoning` (and `reasoning_content`, the
name other servers use), the answer as `message.content`; while streaming,
`delta.reasoning` chunks come first, then `delta.content` chunks, then a
usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`.
`reasoning_effort` (none, minimal, low, medium, high) picks a thinking budget
(`ponder.engine.budget.EFFORT`; none = no thinking); `thinking_budget`
(0 off, N a cap, -1 adaptive) sets one directly and wins over the effort.
`strategy` (vote, adaptive) turns n samples into one voted answer
(`ponder.serve.strategy`); the response's `strategy` field holds the votes.
`tools: [{"type": "calculator"}]` lets the model call the server's tools while it
thinks (`ponder serve --tools`); the calls and their `<output>` are part of the
reasoning, and the thinking then runs without a budget.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request

from ponder.serve.reasoning import RequestError, effort_to_budget, shown_reasoning, split_completion, summarize
from ponder.serve.schemas import ChatRequest, stops_of, text_of
from ponder.serve.sse import JobStream
from ponder.serve.service import Plan, Service, finish_reason

DEFAULT_EFFORT = "medium"  # the OpenAI API's default for reasoning models

router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


@router.get("/v1/models")
def list_models(request: Request) -> dict:
    svc = _service(request)
    return {"object": "list", "data": [{"id": svc.name, "object": "model", "created": 0, "owned_by": "ponder"}]}


def plan_chat(svc: Service, body: ChatRequest) -> Plan:
    svc.check_model(body.model)
    tools = svc.tool_tags([t.wanted for t in body.tools or ()])
    if tools and (body.thinking_budget is not None or body.reasoning_effort is not None):
        field = "thinking_budget" if body.thinking_budget is not None else "reasoning_effort"
        raise RequestError(field, f"{field} with tools is not supported yet (a budget would count each stretch "
                                  f"between tool calls); valid: leave {field} unset when tools are enabled")
    if body.thinking_budget is not None:
        budget = body.thinking_budget
    else:
        budget = effort_to_budget(body.reasoning_effort or DEFAULT_EFFORT)
    field, requested = (("max_completion_tokens", body.max_completion_tokens) if body.max_completion_tokens
                        else ("max_tokens", body.max_tokens))
    messages = [(m.role, text_of(m.content)) for m in body.messages]
    return svc.plan(messages, budget, requested, field, body.temperature, body.top_p, stops_of(body.stop),
                    body.n, body.seed, body.include_reasoning, tools)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    svc = _service(request)
    plan = plan_chat(svc, body)
    if body.strategy and body.stream:
        raise RequestError("stream", f"strategy {body.strategy!r} returns one voted answer and does not stream; "
                                     f"valid: stream false")
    if not body.strategy:
        svc.submit(plan)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": svc.name}
    if body.strategy:
        return await _with_strategy(svc, plan, body, meta, request)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return JobStream(_sse(svc, plan, meta, usage), svc.dropper(plan))
    samples = await svc.results(plan, request.is_disconnected)
    return {**meta, "object": "chat.completion", "choices": [_choice(plan, s, s.sample_index) for s in samples],
            "usage": usage_of(len(plan.job.prompt_ids), samples)}


def _choice(plan: Plan, s, index: int) -> dict:
    split = split_completion(s.text, plan.opened, True, plan.stops, s.finish == "stop")
    shown = shown_reasoning(plan.reasoning, split.thinking, s.thinking_tokens)
    message = {"role": "assistant", "content": split.answer, "reasoning": shown, "reasoning_content": shown}
    return {"index": index, "message": message, "finish_reason": finish_reason(s), "logprobs": None}


async def _with_strategy(svc: Service, plan: Plan, body: ChatRequest, meta: dict, request: Request) -> dict:
    from ponder.serve.strategy import run_strategy
    chosen, samples, details = await run_strategy(svc, plan, body.strategy, body.n, request.is_disconnected)
    if chosen is None:
        return {}
    return {**meta, "object": "chat.completion", "choices": [_choice(plan, chosen, 0)],
            "usage": usage_of(len(plan.job.prompt_ids), samples), "strategy": details}


def usage_of(prompt_tokens: int, samples) -> dict:
    completion = sum(len(s.ids) for s in samples)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "completion_tokens_details": {"reasoning_tokens": sum(s.thinking_tokens for s in samples)}}


def _chunk(meta: dict, choices: list[dict], with_usage: bool = False, usage: dict | None = None) -> str:
    """One SSE chunk; with `with_usage` every chunk has a `usage` key (null but on the last), as in the API."""
    body = {**meta, "object": "chat.completion.chunk", "choices": choices}
    if with_usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


async def _sse(svc: Service, plan: Plan, meta: dict, usage: bool):
    rows = plan.job.rows
    async with svc.streaming(plan) as batches:  # a hang-up anywhere in here drops the job
        yield _chunk(meta, [{"index": j, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                            for j in range(rows)], usage)
        samples, summarized = [], set()
        try:
            async for deltas in batches:
                out = []  # every chunk of this batch in one write: a write costs more than its bytes
                for d in deltas:
                    for delta in _reasoning_deltas(plan.reasoning, d, summarized):
                        out.append(_chunk(meta, [{"index": d.j, "delta": delta, "finish_reason": None}], usage))
                    if d.content:
                        out.append(_chunk(meta, [{"index": d.j, "delta": {"content": d.content},
                                                  "finish_reason": None}], usage))
                    if d.sample is not None:
                        samples.append(d.sample)
                        out.append(_chunk(meta, [{"index": d.j, "delta": {}, "finish_reason": finish_reason(d.sample)}],
                                          usage))
                if out:
                    yield "".join(out)
        except Exception as e:  # a failure mid-stream: say so in the stream, the status is already sent
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
            return
    tail = _chunk(meta, [], True, usage_of(len(plan.job.prompt_ids), samples)) if usage else ""
    yield tail + "data: [DONE]\n\n"


def _reasoning_deltas(mode: str, d, summarized: set) -> list[dict]:
    """The reasoning deltas to send for `d` under the server's reasoning mode."""
    if mode == "visible":
        return [{"reasoning": d.reasoning, "reasoning_content": d.reasoning}] if d.reasoning else []
    if mode == "summary" and d.thinking_done and d.j not in summarized:
        summarized.add(d.j)
        text = summarize(d.thinking, d.thinking_tokens)
        return [{"reasoning": text, "reasoning_content": text}]
    return []
