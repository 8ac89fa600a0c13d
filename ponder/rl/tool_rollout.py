"""Generation with tool calls inside the completion, over the engine's step-wise batch.

`generate_with_tools` is `Engine.generate_ids` plus tools (`ponder.verifiers.tools`):

1. every row decodes with the tools' closing tags (`</calc>`, `</python>`, ...) as
   extra stop strings, so a row whose text reaches one leaves the batch;
2. the call runs on a worker thread while the other rows keep decoding;
3. when it returns, `<output>…</output>` is appended to the row's tokens and the row
   rejoins the running batch with its whole context as the prompt and the rest of
   its token limit (tool output counts toward the limit);
4. a row's k-th segment (k = calls before it) samples from the stream of
   `segment_seed(row seed, k)`: segment 0 is the plain row seed, so a completion
   without calls equals the engine's, and no seed depends on which other rows are
   in the batch or when the call returned. With the engine's guarantee that a
   request's tokens do not depend on the rest of the batch, a row paused for a tool
   gives the tokens it gives alone (tested).

Each completion comes back as a `ToolSample`: the `Sample` of all its tokens, model
and tool alike, in order, and a per-token `loss_mask` (1: sampled by the model,
0: written by a tool) -- the policy loss and the KL must skip the zeros
(`masked_completion`). `rollout_with_tools` is `ponder.rl.rollout.rollout` over it, and
`maybe_tool_rollout` picks one of the two for the verbs that generate (`ponder eval`,
`ponder train`): no toolbox, the plain `rollout`, unchanged.

Not yet supported: thinking budgets (the engine's forcer counts a segment, not the
completion, so a budget with tools is refused).
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import torch

from ponder.core.config import ConfigError
from ponder.engine.engine import Engine, Sample, SamplingParams
from ponder.rl.rollout import Group, RewardFn, RolloutResult, request_chunks, rewards_of, rollout, verdict_score
from ponder.tasks.base import Example, Task
from ponder.verifiers.batch import verify_batch
from ponder.verifiers.tools import ToolResult, Toolbox, output_text

TOOL_THREADS = 8  # threads wait on sandboxes (or run trusted user tools); the GIL is free meanwhile


@dataclass(frozen=True)
class ToolSample:
    sample: Sample  # the whole completion: the model's tokens and the tools' outputs, in order
    loss_mask: tuple[int, ...]  # per token of sample.ids: 1 sampled by the model, 0 written by a tool
    calls: tuple[ToolResult, ...]  # the calls made, in order


@dataclass
class ToolRow:
    """One row's completion so far, across its segments (also the serving worker's, `ponder.serve.worker`)."""
    i: int
    j: int
    seed: int
    limit: int
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    calls: list[ToolResult] = field(default_factory=list)


def segment_seed(seed: int, k: int) -> int:
    """The random stream of a row's segment after its k-th tool call (k = 0: the row's own seed).

    >>> segment_seed(123, 0)
    123
    >>> segment_seed(123, 1) != segment_seed(123, 2)
    True
    """
    if k == 0:
        return seed
    h = hashlib.blake2b(f"{seed}/tool/{k}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


def generate_with_tools(engine: Engine, prompt_ids: list[list[int]], n: int, params: SamplingParams,
                        seeds: list[list[int]], limits: list[int], toolbox: Toolbox) -> list[ToolSample]:
    """`Engine.generate_ids` with tool calls (see the module doc); rows in row-major order."""
    if params.controls_thinking:
        raise ConfigError("thinking budgets are not supported with tools yet (the budget would count per "
                          "segment); drop thinking_budget/min_thinking or the tools")
    tool_params = toolbox.with_stops(params)
    # A row rejoins with its whole context after each call: `trim` drops the leading columns no
    # running row uses (else the shared column timeline grows with every step and every rejoin
    # widens the cache), and `max_rows` = every row of the request caps the rows a reallocation adds.
    batch = engine.batch(max_rows=len(prompt_ids) * n, trim=True)
    owner: dict[int, tuple[int, int | None]] = {}  # request id -> (prompt i, sample j; None: all of the first segment)
    rows = {(i, j): ToolRow(i, j, seeds[i][j], limits[i]) for i in range(len(prompt_ids)) for j in range(n)}
    for i, p in enumerate(prompt_ids):
        owner[batch.add(p, tool_params, seeds[i][:n], limits[i])] = (i, None)
    done: dict[tuple[int, int], ToolSample] = {}
    waiting: dict[Future, ToolRow] = {}
    with ThreadPoolExecutor(TOOL_THREADS) as pool:
        while batch.running or waiting:
            if batch.running:
                batch.step()
            else:
                wait(list(waiting), return_when=FIRST_COMPLETED)
            for s in batch.take_finished():
                i, j = owner[s.prompt_index]
                row = rows[i, j if j is not None else s.sample_index]
                call = segment_done(engine, row, s, toolbox)
                if call is not None and len(row.ids) < row.limit:
                    waiting[pool.submit(toolbox.call, *call, len(row.calls))] = row
                else:  # done, or a call with no room left for its output
                    done[row.i, row.j] = finish_row(engine, prompt_ids[row.i], row,
                                                 "length" if call is not None else s.finish)
            for fut in [f for f in waiting if f.done()]:
                row = waiting.pop(fut)
                rid, _ = resume_row(engine, batch, prompt_ids[row.i], row, fut.result(), tool_params)
                if rid is None:
                    done[row.i, row.j] = finish_row(engine, prompt_ids[row.i], row, "length")
                else:
                    owner[rid] = (row.i, row.j)
    return [done[i, j] for i in range(len(prompt_ids)) for j in range(n)]


def segment_done(engine: Engine, row: ToolRow, s: Sample, toolbox: Toolbox) -> tuple[str, str] | None:
    """Add a finished segment to its row; the (tag, argument) of the call it ends with, if any."""
    row.ids += s.ids
    row.mask += [1] * len(s.ids)
    if s.finish != "stop":
        return None
    return toolbox.find_call(engine.tok.decode(row.ids[-512:], skip_special_tokens=True))


def resume_row(engine: Engine, batch, prompt: list[int], row: ToolRow, result: ToolResult,
               params: SamplingParams) -> tuple[int | None, list[int]]:
    """Append the call's output and rejoin the batch: (the new request id, None when no token of
    the limit is left; the output's tokens)."""
    row.calls.append(result)
    out = engine.tok(output_text(result), add_special_tokens=False)["input_ids"]
    out = out[: row.limit - len(row.ids)]
    row.ids += out
    row.mask += [0] * len(out)
    room = row.limit - len(row.ids)
    if room < 1:
        return None, out
    return batch.add(prompt + row.ids, params, [segment_seed(row.seed, len(row.calls))], room), out


def finish_row(engine: Engine, prompt: list[int], row: ToolRow, finish: str) -> ToolSample:
    """The row's whole completion as one Sample (text and section counts over all its tokens)."""
    body = row.ids[:-1] if finish == "eos" else row.ids
    text = engine.tok.decode(body, skip_special_tokens=True)
    think, answer = engine.count_sections(body, text)
    sample = Sample(row.i, row.j, tuple(prompt), tuple(row.ids), text, finish, think, answer)
    return ToolSample(sample, tuple(row.mask), tuple(row.calls))


# ------------------------------------------------------------------ rollouts, loss masks, metrics

@dataclass(frozen=True)
class ToolGroup(Group):
    """A `Group` whose completions may hold tool output: loss_masks[j][t] is 0 for a tool's token."""
    loss_masks: tuple[tuple[int, ...], ...] = ()  # (n,) per completion token
    calls: tuple[tuple[ToolResult, ...], ...] = ()  # (n,) the calls of each completion


def rollout_with_tools(engine: Engine, task: Task, examples: list[Example], n: int, params: SamplingParams,
                       seed: int, toolbox: Toolbox, reward: RewardFn = verdict_score, index_offset: int = 0,
                       policy_version: int = 0, chunk: int = 0, verify=verify_batch) -> RolloutResult:
    """`ponder.rl.rollout.rollout` with tools: the same seeding rule (row (i, j) of the request
    draws from `row_seed(seed, index_offset + i, j)` at any `chunk` size), groups carrying their
    loss masks. `generated_tokens` counts the model's tokens only; `seconds` is generation with the
    tools' time (verification excluded, as in `rollout`)."""
    groups, model_tokens, seconds = [], 0, 0.0
    for _, part, ids, seeds in request_chunks(engine, examples, n, seed, index_offset, chunk):
        t0 = time.perf_counter()
        flat = generate_with_tools(engine, ids, n, params, seeds, [params.max_new_tokens] * len(part), toolbox)
        seconds += time.perf_counter() - t0
        verdicts = verify(task, [t.sample.text for t in flat], [ex for ex in part for _ in range(n)])
        for i, ex in enumerate(part):
            rows, vs = flat[i * n:(i + 1) * n], tuple(verdicts[i * n:(i + 1) * n])
            samples = tuple(t.sample for t in rows)
            groups.append(ToolGroup(ex, samples, vs, rewards_of(samples, vs, reward), policy_version,
                                    loss_masks=tuple(t.loss_mask for t in rows), calls=tuple(t.calls for t in rows)))
        model_tokens += sum(sum(t.loss_mask) for t in flat)
    return RolloutResult(groups, model_tokens, seconds)


def maybe_tool_rollout(engine: Engine, task: Task, examples: list[Example], n: int, params: SamplingParams,
                       seed: int, toolbox: Toolbox | None = None, **kw) -> RolloutResult:
    """`rollout` when `toolbox` is None (no tools: exactly today's rollouts), else `rollout_with_tools`."""
    if toolbox is None:
        return rollout(engine, task, examples, n, params, seed, **kw)
    if kw.pop("max_tokens", None) is not None:
        raise ConfigError("per-example token limits are not supported with tools yet")
    return rollout_with_tools(engine, task, examples, n, params, seed, toolbox, **kw)


def masked_completion(comp: torch.Tensor, groups: list[Group]) -> torch.Tensor:
    """The completion mask of `pack` (B, L-1) with every tool-output token set to 0: no loss, no KL.

    Row b's completion token t is predicted at column len(prompt) - 1 + t (see `pack`).
    Groups without loss masks (no tools) are left as they are.
    """
    masks = [m for g in groups for m in (g.loss_masks if isinstance(g, ToolGroup) else [()] * len(g.samples))]
    if not any(masks):
        return comp
    out = comp.clone()
    samples = [s for g in groups for s in g.samples]
    for b, (s, m) in enumerate(zip(samples, masks)):
        if m:
            start = len(s.prompt_ids) - 1
            out[b, start:start + len(m)] *= torch.tensor(m, dtype=out.dtype)
    return out


def tool_metrics(groups: list[Group]) -> dict[str, float]:
    """Per completion: tool calls, failed calls, seconds in tools and tokens tools wrote; and the
    share of calls that failed. Groups without tools count as completions with no calls."""
    tooled = [g for g in groups if isinstance(g, ToolGroup)]
    calls = [c for g in tooled for cs in g.calls for c in cs]
    rows = sum(len(g.samples) for g in groups) or 1
    errors = sum(c.error for c in calls)
    tool_tokens = sum(len(m) - sum(m) for g in tooled for m in g.loss_masks)
    return {"tool_calls": len(calls) / rows, "tool_errors": errors / rows,
            "tool_seconds": sum(c.seconds for c in calls) / rows, "tool_tokens": tool_tokens / rows,
            "tool_error_frac": errors / max(1, len(calls))}
