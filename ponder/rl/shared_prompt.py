"""One forward of a group's prompt for all of its completions, in the update.

A GRPO group is G completions of one prompt. The plain update runs every row as prompt +
completion, so the prompt's tokens go through the model G times. Here a chunk holds rows of one
group: the prompt runs once (batch 1) and its keys and values are repeated for the chunk's rows,
whose completion tokens attend to them as to a KV cache; the gradient flows back through the
repeated keys and values into the one prompt pass. It is the same function of the same weights --
each row's hidden states are those of its own prompt + completion, and the prompt's gradient sums
over the rows either way -- so the update is the same to float rounding (tests/test_shared_prompt.py).

What it saves: with a P-token prompt and completions of C tokens, a group of G rows costs
P + G*C tokens instead of G*(P + C): on 4 invoice prompts (~314 tokens in the chat template) x 8
completions of 80-200 tokens, 5,766 tokens instead of 14,551 (`bench/bench_shared_prompt.py`). Short
prompts (the quickstart's ~15 tokens) gain little.

Built on the HF model's own cache (`DynamicCache`), which carries gradients: nothing here is a
second implementation of attention.
"""

from __future__ import annotations

import inspect

import torch


def group_chunks(rows: torch.Tensor, groups: torch.Tensor, prompt_lens: torch.Tensor, lengths: torch.Tensor,
                 micro_batch: int, max_tokens: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Split row indices into (rows, prompt length) chunks of one group each, its rows by length.

    A chunk holds at most `micro_batch` rows (0 = no cap) and, when `max_tokens` > 0, at most that
    many tokens counted as the update runs them: the prompt once plus each row's padded completion
    (always at least one row)."""
    chunks = []
    for g in torch.unique(groups[rows], sorted=True).tolist():
        mine = rows[groups[rows] == g]
        mine = mine[lengths[mine].argsort(stable=True)]
        P = int(prompt_lens[mine[0]])
        start = 0
        for end in range(1, len(mine) + 1):
            n, longest = end - start, int(lengths[mine[end - 1]])
            if n > 1 and ((micro_batch and n > micro_batch) or (max_tokens and P + n * (longest - P) > max_tokens)):
                chunks.append((mine[start:end - 1], P))
                start = end - 1
        chunks.append((mine[start:], P))
    return chunks


def shares_prompt(ids: torch.Tensor, comp: torch.Tensor, P: int) -> bool:
    """Do all rows start with the same P tokens, with no completion token before position P?"""
    return 0 < P < ids.size(1) and bool((ids[:, :P] == ids[:1, :P]).all()) and not comp[:, : P - 1].any()


def _cache_name(body) -> str:
    """The keyword HF's decoder takes its KV cache by: `cache` (transformers 5) or `past_key_values`."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def shared_prompt_hidden(body, ids: torch.Tensor, attn: torch.Tensor, P: int) -> torch.Tensor:
    """(n, L - P, D) final hidden states at positions P-1 .. L-2 -- those whose next token is a
    completion token -- of n rows (n, L) that share their first P tokens, the prompt run once."""
    n = ids.size(0)
    name = _cache_name(body)
    first = body(input_ids=ids[:1, :P], attention_mask=attn[:1, :P], use_cache=True)
    cache = getattr(first, name)
    cache.batch_repeat_interleave(n)  # differentiable: each row's keys and values are the prompt's
    rest = body(input_ids=ids[:, P:], attention_mask=attn, use_cache=True, **{name: cache}).last_hidden_state
    return torch.cat([first.last_hidden_state[:, P - 1:].expand(n, -1, -1), rest[:, :-1]], dim=1)
