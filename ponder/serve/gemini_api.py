"""Gemini `generateContent` and `streamGenerateContent` (`/v1beta/models/MODEL:...`).

`generationConfig.thinkingConfig.thinkingBudget` is ponder's budget as is (0 off,
N a cap, -1 dynamic, the default); thoughts come back as parts with
`thought: true` before the answer's parts only with `includeThoughts: true`,
and are counted in `usageMetadata.thoughtsTokenCount` either way. Streaming
answers Server-Sent Events (the `alt=sse` form), one response object per event.
The key is accepted as `x-goog-api-key`.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from ponder.serve.reasoning import shown_reasoning, split_completion, summarize
from ponder.serve.schemas import GenerateContentRequest, GenerationConfig
from ponder.serve.sse import JobStream
from ponder.serve.service import Plan, Service

router = APIRouter()


def plan_generate(svc: Service, model: str, body: GenerateContentRequest) -> Plan:
    svc.check_model(model.removeprefix("models/"))
    cfg = body.generationConfig or GenerationConfig()
    think = cfg.thinkingConfig
    budget = -1 if think is None or think.thinkingBudget is None else think.thinkingBudget
    role = {"user": "user", "model": "assistant", None: "user"}
    messages = [(role[c.role], "".join(p.text for p in c.parts)) for c in body.contents]
    if body.systemInstruction is not None:
        messages.insert(0, ("system", "".join(p.text for p in body.systemInstruction.parts)))
    stops = tuple(s for s in cfg.stopSequences or () if s)
    include = bool(think and think.includeThoughts)
    return svc.plan(messages, budget, cfg.maxOutputTokens, "generationConfig.maxOutputTokens", cfg.temperature,
                    cfg.topP, stops, cfg.candidateCount, cfg.seed, None if include else False)


def usage_of(prompt_tokens: int, samples) -> dict:
    thoughts = sum(s.thinking_tokens for s in samples)
    out = sum(len(s.ids) for s in samples)
    return {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out - thoughts,
            "thoughtsTokenCount": thoughts, "totalTokenCount": prompt_tokens + out}


def finish_of(sample) -> str:
    return "MAX_TOKENS" if sample.finish == "length" else "STOP"


@router.post("/v1beta/models/{model}:generateContent")
async def generate_content(model: str, body: GenerateContentRequest, request: Request):
    svc: Service = request.app.state.service
    plan = plan_generate(svc, model, body)
    svc.submit(plan)
    samples = await svc.results(plan, request.is_disconnected)
    candidates = []
    for s in samples:
        split = split_completion(s.text, plan.opened, True, plan.stops, s.finish == "stop")
        shown = shown_reasoning(plan.reasoning, split.thinking, s.thinking_tokens)
        parts = ([{"text": shown, "thought": True}] if shown else []) + [{"text": split.answer}]
        candidates.append({"content": {"role": "model", "parts": parts}, "finishReason": finish_of(s),
                           "index": s.sample_index})
    return {"candidates": candidates, "usageMetadata": usage_of(len(plan.job.prompt_ids), samples),
            "modelVersion": svc.name}


@router.post("/v1beta/models/{model}:streamGenerateContent")
async def stream_generate_content(model: str, body: GenerateContentRequest, request: Request):
    svc: Service = request.app.state.service
    plan = plan_generate(svc, model, body)
    svc.submit(plan)
    return JobStream(_events(svc, plan), svc.dropper(plan))


async def _events(svc: Service, plan: Plan):
    samples, summarized = [], set()
    event = lambda obj: f"data: {json.dumps(obj)}\n\n"
    try:
        async for d in svc.stream(plan):
            parts = []
            if plan.reasoning == "visible" and d.reasoning:
                parts.append({"text": d.reasoning, "thought": True})
            elif plan.reasoning == "summary" and d.thinking_done and d.j not in summarized:
                summarized.add(d.j)
                parts.append({"text": summarize(d.thinking, d.thinking_tokens), "thought": True})
            if d.content:
                parts.append({"text": d.content})
            cand = {"content": {"role": "model", "parts": parts}, "index": d.j}
            if d.sample is not None:
                samples.append(d.sample)
                cand["finishReason"] = finish_of(d.sample)
            if parts or d.sample is not None:
                body = {"candidates": [cand], "modelVersion": svc.name}
                if len(samples) == plan.job.rows:
                    body["usageMetadata"] = usage_of(len(plan.job.prompt_ids), samples)
                yield event(body)
    except Exception as e:  # the status is already sent: report the failure in the stream
        yield event({"error": {"code": 500, "message": str(e), "status": "INTERNAL"}})
