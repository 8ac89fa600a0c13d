"""One token-in/token-out generation engine for rollouts, evaluation and scaling.

`Engine.generate(prompts, n, params, seed)` samples `n` completions for each
prompt. How it works, and why:

1. Prompts are left-padded into one batch and prefilled once; for a group of
   `n` samples the prompt's KV cache is computed once and repeated `n` times
   (`batch_repeat_interleave`), never recomputed per sample.
2. Every row decodes with its own random stream: a `torch.Generator` seeded
   from (seed, prompt index, sample index) draws the row's uniforms up front,
   and a token is picked by inverting the row's CDF with them. A row's tokens
   therefore do not depend on what else is in the batch: batched sampling
   equals one-by-one sampling (tested), and the same seed gives the same tokens.
3. Rows that finish (EOS, a stop string, or their token limit) leave the
   batch: their cache rows are dropped, so no compute is spent decoding
   finished sequences (HF `generate` keeps decoding them).
4. A thinking budget (`SamplingParams.thinking_budget`, see `ponder.budget`)
   is enforced per row inside the loop: a `ThinkingForcer` may replace the
   sampled token (`</think>` at the cap, "Wait" below the minimum), and the
   token fed back to the model is the one emitted.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import torch

from ponder.engine.budget import ThinkingForcer, check_budget, row_cap
from ponder.core.config import ConfigError
from ponder.models.decoder import Decoder, supports
from ponder.tasks.base import THINK_CLOSE, THINK_OPEN, thinking_text


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128  # per sequence, unless `generate(max_tokens=...)` gives one per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling; 1.0 keeps the full distribution
    stop: tuple[str, ...] = ()  # stop when the completion's text ends with one of these
    thinking_budget: int | None = None  # None: no control; -1 adaptive; 0 no thinking; N: cap (ponder.engine.budget)
    min_thinking: int = 0  # below this many thinking tokens an early </think> becomes `wait_text` (s1)
    answer_reserve: int = 16  # with a budget, tokens of the limit kept for the answer
    answer_prefix: str = ""  # forced right after a </think> the engine forces or the model emits
    wait_text: str = "Wait"  # what replaces an early </think>

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.thinking_budget is not None or self.min_thinking:
            check_budget(self.thinking_budget, self.min_thinking, self.answer_reserve, self.max_new_tokens)

    @property
    def controls_thinking(self) -> bool:
        return self.thinking_budget is not None or self.min_thinking > 0


@dataclass(frozen=True)
class Sample:
    prompt_index: int
    sample_index: int
    prompt_ids: tuple[int, ...]
    ids: tuple[int, ...]  # generated tokens; ends with EOS when finish == "eos"
    text: str  # decoded completion, without EOS
    finish: str  # "eos" | "stop" | "length"
    thinking_tokens: int  # tokens strictly between <think> and </think> (or the end)
    answer_tokens: int  # tokens after </think>, EOS excluded

    @property
    def truncated(self) -> bool:
        return self.finish == "length"


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    forward_calls: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A 63-bit seed for one row's random stream."""
    h = hashlib.blake2b(f"{seed}/{prompt_index}/{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


def pick_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Sample one token per row by inverting its CDF at the uniform `u`.

    logits: (B, V); u: (B,) in [0, 1). Greedy when temperature == 0.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        cdf = sorted_p.cumsum(-1)
        pos = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).clamp_max(probs.size(-1) - 1)
        return order.gather(-1, pos).squeeze(-1)
    cdf = probs.cumsum(-1)
    pos = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).clamp_max(probs.size(-1) - 1)
    return pos.squeeze(-1)


ROLLOUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@torch.no_grad()
def rollout_copy(model, precision: str, previous=None):
    """The model rollouts sample from: `model` itself for fp32; for bf16 a copy with bf16
    weights, refreshed in place from `model` when `previous` is given (no reallocation).

    Why a copy rather than autocast: autocast re-casts every weight at every decode
    step, which at decode shapes (a few dozen rows) costs more than the bf16 matmul saves
    (measured on SmolLM2-135M, 1 core: 24 vs 54 GFLOP/s for a 64x576x1536 linear).
    Logits come out in bf16, as from any bf16 inference server; sampling upcasts them.
    """
    dtype = ROLLOUT_DTYPES[precision]
    if dtype == next(model.parameters()).dtype:
        return model
    if previous is None:
        import copy
        previous = copy.deepcopy(model).eval().requires_grad_(False)
        for p in previous.parameters():  # parameters only: buffers such as rotary inv_freq stay fp32
            p.data = p.data.to(dtype)
        return previous
    for dst, src in zip(previous.parameters(), model.parameters()):
        dst.copy_(src)
    return previous


class Engine:
    """Batched, KV-cached sampling from an HF causal LM."""

    def __init__(self, model, tokenizer, fast: bool = True):
        self.model = model
        self.tok = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        vocab = tokenizer.get_vocab()
        self.think_ids = (vocab.get(THINK_OPEN), vocab.get(THINK_CLOSE))
        self.last_stats = GenerationStats()
        self.decoder = Decoder(model) if (fast and supports(model)) else None

    # -- public ------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        return self.tok(prompt)["input_ids"]

    def generate(self, prompts: list[str], n: int = 1, params: SamplingParams = SamplingParams(),
                 seed: int = 0, max_tokens: list[int] | None = None) -> list[list[Sample]]:
        """`n` samples for each prompt: result[i][j] is sample j of prompt i."""
        if n < 1:
            raise ConfigError(f"n (samples per prompt) must be >= 1, got {n}")
        if max_tokens is not None and len(max_tokens) != len(prompts):
            raise ConfigError(f"max_tokens has {len(max_tokens)} entries for {len(prompts)} prompts")
        prompt_ids = [self.encode(p) for p in prompts]
        seeds = [[row_seed(seed, i, j) for j in range(n)] for i in range(len(prompts))]
        limits = [max_tokens[i] if max_tokens else params.max_new_tokens for i in range(len(prompts))]
        flat = self.generate_ids(prompt_ids, n, params, seeds, limits)
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    @torch.no_grad()
    def generate_ids(self, prompt_ids: list[list[int]], n: int, params: SamplingParams,
                     seeds: list[list[int]], limits: list[int]) -> list[Sample]:
        """Core loop over token ids; rows are (prompt i, sample j) in row-major order."""
        t0 = time.perf_counter()
        P = len(prompt_ids)
        if P == 0:
            return []
        B, T_new = P * n, max(limits)
        # Prefill: left-pad so every prompt ends at the last column.
        Lp = max(map(len, prompt_ids))
        ids = torch.full((P, Lp), self.pad_id, dtype=torch.long)
        mask = torch.zeros((P, Lp), dtype=torch.long)
        for i, p in enumerate(prompt_ids):
            ids[i, Lp - len(p):] = torch.tensor(p)
            mask[i, Lp - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        backend = self._backend()
        logits = backend.prefill(ids, mask, pos, Lp + T_new)  # (P, V)
        if n > 1:  # share each prompt's cache across its group
            backend.repeat_interleave(n)
            logits = logits.repeat_interleave(n, 0)
        next_pos = torch.tensor([len(p) for p in prompt_ids]).repeat_interleave(n)  # (B,)
        # Each row's uniforms, drawn from its own generator.
        u = torch.empty((B, T_new))
        for r in range(B):
            g = torch.Generator().manual_seed(seeds[r // n][r % n])
            u[r] = torch.rand(T_new, generator=g)
        row_limit = [lim for lim in limits for _ in range(n)]
        forcers = self._forcers(prompt_ids, n, params, row_limit) if params.controls_thinking else None
        generated: list[list[int]] = [[] for _ in range(B)]
        finish = ["length"] * B
        rows = torch.arange(B)  # original row of each batch row still in the cache
        live = torch.ones(B, dtype=torch.bool)  # batch rows still generating
        calls = 1
        for t in range(T_new):
            if forcers is not None:  # e.g. no EOS right after </think>: the answer is never empty
                for k, r in enumerate(rows.tolist()):
                    if ban := forcers[r].banned():
                        logits[k, list(ban)] = -float("inf")
            tokens = pick_tokens(logits, u[rows, t], params.temperature, params.top_p)  # (R,)
            for k in live.nonzero().flatten().tolist():
                r, tk = int(rows[k]), int(tokens[k])
                if forcers is not None:
                    tk = forcers[r].next(tk)
                    tokens[k] = tk  # the model sees the forced token, not the sampled one
                generated[r].append(tk)
                if tk == self.eos_id:
                    finish[r] = "eos"
                elif params.stop and self._hits_stop(generated[r], params.stop):
                    finish[r] = "stop"
                elif len(generated[r]) < row_limit[r]:
                    continue
                live[k] = False
            n_live = int(live.sum())
            if n_live == 0:
                break
            # Drop finished rows once they are a quarter of the batch: a cache copy is
            # dearer than a few wasted rows, so compaction is batched.
            if n_live <= 0.75 * len(rows):
                keep = live.nonzero().flatten()
                backend.select(keep)
                rows, tokens, live = rows[keep], tokens[keep], live[keep]
            tokens = tokens.masked_fill(~live, self.pad_id)
            logits = backend.step(tokens, next_pos[rows] + t, start=Lp + t)
            calls += 1
        samples = [self._sample(r // n, r % n, prompt_ids[r // n], generated[r], finish[r]) for r in range(B)]
        self.last_stats = GenerationStats(
            prompt_tokens=sum(map(len, prompt_ids)), generated_tokens=sum(map(len, generated)),
            seconds=time.perf_counter() - t0, forward_calls=calls)
        return samples

    def _backend(self):
        if self.decoder is not None:
            return _FastBackend(self.decoder)
        return _HFBackend(self.model)

    # -- helpers -----------------------------------------------------------------
    def _forcers(self, prompt_ids, n, params: SamplingParams, row_limit: list[int]) -> list[ThinkingForcer]:
        """One budget-forcing state machine per row (see `ponder.budget`)."""
        open_id, close_id = self.think_ids
        if open_id is None or close_id is None:
            raise ConfigError("thinking budgets need a tokenizer with single <think> and </think> tokens")
        enc = lambda text: self.tok(text, add_special_tokens=False)["input_ids"] if text else []
        wait, prefix = enc(params.wait_text), enc(params.answer_prefix)
        budget = -1 if params.thinking_budget is None else params.thinking_budget
        out = []
        for r, limit in enumerate(row_limit):
            p = prompt_ids[r // n]
            # A chat template may already have opened the thinking in the prompt.
            opened = open_id in p and (close_id not in p or p[::-1].index(open_id) < p[::-1].index(close_id))
            cap = row_cap(budget, limit, params.answer_reserve, len(prefix), opened)
            out.append(ThinkingForcer(open_id, close_id, self.eos_id, cap, params.min_thinking, wait, prefix, opened))
        return out

    def _hits_stop(self, ids: list[int], stops: tuple[str, ...]) -> bool:
        tail = self.tok.decode(ids[-32:], skip_special_tokens=True)
        return any(tail.endswith(s) for s in stops)

    def _sample(self, i: int, j: int, prompt: list[int], ids: list[int], finish: str) -> Sample:
        body = ids[:-1] if finish == "eos" else ids
        text = self.tok.decode(body, skip_special_tokens=True)
        think, answer = self.count_sections(body, text)
        return Sample(i, j, tuple(prompt), tuple(ids), text, finish, think, answer)

    def count_sections(self, ids: list[int], text: str) -> tuple[int, int]:
        """(thinking tokens, answer tokens) of a completion."""
        open_id, close_id = self.think_ids
        if open_id is not None and close_id is not None:
            if open_id not in ids:
                return 0, len(ids)
            a = ids.index(open_id)
            b = ids.index(close_id, a) if close_id in ids[a:] else len(ids)
            return b - a - 1, max(0, len(ids) - b - 1)
        # Tokenizers without single think tokens: count by re-encoding the text.
        think = thinking_text(text)
        n_think = len(self.tok(think, add_special_tokens=False)["input_ids"]) if think else 0
        return n_think, max(0, len(ids) - n_think)


class _FastBackend:
    """Preallocated KV cache and ponder's own Llama-family forward (see `ponder.decoder`)."""

    def __init__(self, decoder: Decoder):
        self.dec, self.cache = decoder, None

    def prefill(self, ids, mask, pos, max_len):
        self.cache = self.dec.new_cache(ids.size(0), max_len)
        return self.dec.forward(ids, pos, self.cache, start=0, valid=mask.bool())

    def repeat_interleave(self, n):
        self.cache.repeat_interleave(n)

    def select(self, keep):
        self.cache.select(keep)

    def step(self, tokens, pos, start):
        return self.dec.forward(tokens[:, None], pos[:, None], self.cache, start=start)


class _HFBackend:
    """Any HF causal LM through its own forward and `DynamicCache`."""

    def __init__(self, model):
        self.model, self.cache, self.mask = model, None, None

    def prefill(self, ids, mask, pos, max_len):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        self.cache, self.mask = out.past_key_values, mask
        return out.logits[:, -1, :]

    def repeat_interleave(self, n):
        self.cache.batch_repeat_interleave(n)
        self.mask = self.mask.repeat_interleave(n, 0)

    def select(self, keep):
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]

    def step(self, tokens, pos, start):
        self.mask = torch.cat([self.mask, torch.ones((len(tokens), 1), dtype=torch.long)], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=pos[:, None],
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1, :]
