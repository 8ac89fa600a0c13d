"""One token-in/token-out generation engine for rollouts, evaluation, scaling and serving.

Public API:

- `Engine(model, tokenizer, fast=True)`
- `Engine.generate(prompts, n=1, params=SamplingParams(), seed=0, max_tokens=None) -> list[list[Sample]]`:
  `n` samples for each prompt; `Engine.generate_ids(prompt_ids, n, params, seeds, limits) -> list[Sample]`
  is the same over token ids with explicit per-row seeds.
- Step-wise, for continuous batching (`ponder serve`): `batch = Engine.batch(max_rows=None, trim=False)`
  (`max_rows`: rows to make room for up front; `trim`: drop columns no running row uses), then
  - `batch.add(prompt_ids, params, seeds, max_tokens=None) -> int`: queue a request with one
    sample per seed (seeds from `row_seed`); it joins the running rows at the next step; returns its id;
  - `batch.step() -> list[Token]`: admit waiting requests (one batched prefill), then one decode step
    for every running row; `Token(rid, j, token, finish)` per emitted token;
  - `batch.take_finished() -> list[Sample]`: rows finished since the last call
    (`Sample.prompt_index` is the request id);
  - `batch.drop(rid)`: stop a request now (its rows yield no Sample); `batch.running`: rows left.
  `generate` is a loop over these.

How it works, and why:

1. Prompts are left-padded into one batch and prefilled once; for a group of
   `n` samples the prompt's KV cache is computed once and repeated `n` times,
   never recomputed per sample.
2. Every row decodes with its own random stream: a `torch.Generator` seeded
   from (seed, prompt index, sample index) draws the row's uniforms up front,
   and a token is picked by inverting the row's CDF with them. A row's tokens
   therefore do not depend on what else is in the batch: batched sampling
   equals one-by-one sampling, a request that joins a running batch mid-way
   gets the tokens it gets alone (both tested), and the same seed gives the
   same tokens.
3. Rows that finish (EOS, a stop string, or their token limit) leave the
   batch: their result is ready at once and their cache rows are dropped
   (batched, see `Batch`), so no compute is spent decoding finished sequences
   (HF `generate` keeps decoding them).
4. A thinking budget (`SamplingParams.thinking_budget`, see `ponder.engine.budget`)
   is enforced per row inside the loop: a `ThinkingForcer` may replace the
   sampled token (`</think>` at the cap, "Wait" below the minimum), and the
   token fed back to the model is the one emitted.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import torch

from ponder.engine.budget import ANSWER_RESERVE, ThinkingForcer, check_budget, row_cap
from ponder.core.config import ConfigError
from ponder.core.device import of as device_of
from ponder.models.decoder import Decoder, KVCache, supports
from ponder.core.think import THINK_CLOSE, THINK_OPEN, thinking_text


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128  # per sequence, unless `generate(max_tokens=...)` gives one per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling; 1.0 keeps the full distribution
    stop: tuple[str, ...] = ()  # stop when the completion's text ends with one of these
    thinking_budget: int | None = None  # None: no control; -1 adaptive; 0 no thinking; N: cap (ponder.engine.budget)
    min_thinking: int = 0  # below this many thinking tokens an early </think> becomes `wait_text` (s1)
    answer_reserve: int = ANSWER_RESERVE  # with a budget, tokens of the limit kept for the answer
    answer_prefix: str = ""  # forced right after a </think> the engine forces or the model emits
    wait_text: str = "Wait"  # what replaces an early </think>
    logprobs: bool = False  # record each emitted token's log-prob under the model's (untempered) distribution

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
    # with `SamplingParams.logprobs`, one per token of `ids`: log softmax of the logits the token
    # was picked from, at temperature 1 (the distribution a teacher-forced pass scores); else ()
    logprobs: tuple[float, ...] = ()

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
        self.device = device_of(model)  # batches and caches follow the model (ponder.core.device)

    # -- public ------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        return self.tok(prompt)["input_ids"]

    def batch(self, max_rows: int | None = None, trim: bool = False) -> "Batch":
        """A new, empty running batch for step-wise generation (see `Batch`). `max_rows`:
        rows to make room for up front (a server's batch size), so joins rarely reallocate;
        `trim`: drop the columns no running row uses whenever finished rows are dropped
        (attention then spans only the live rows' tokens; what `generate` gets is unchanged
        either way up to float rounding, so `generate` does not trim)."""
        return Batch(self, max_rows, trim)

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
        """Core loop over token ids; rows are (prompt i, sample j) in row-major order.

        A loop over the step-wise API: every prompt joins one fresh batch, which is
        stepped until no row runs."""
        t0 = time.perf_counter()
        if not prompt_ids:
            return []
        batch = self.batch()
        rids = [batch.add(p, params, seeds[i][:n], limits[i]) for i, p in enumerate(prompt_ids)]
        while batch.running:
            batch.step()
        done = {(s.prompt_index, s.sample_index): s for s in batch.take_finished()}
        samples = [done[rid, j] for rid in rids for j in range(n)]
        self.last_stats = GenerationStats(
            prompt_tokens=sum(map(len, prompt_ids)), generated_tokens=sum(len(s.ids) for s in samples),
            seconds=time.perf_counter() - t0, forward_calls=batch.forward_calls)
        return samples

    def _backend(self):
        if self.decoder is not None:
            return _FastBackend(self.decoder)
        return _HFBackend(self.model)

    # -- helpers -----------------------------------------------------------------
    def forcer(self, prompt: list[int], params: SamplingParams, limit: int) -> ThinkingForcer | None:
        """The row's budget-forcing state machine (see `ponder.engine.budget`), or None
        when `params` leaves thinking alone."""
        if not params.controls_thinking:
            return None
        open_id, close_id = self.think_ids
        if open_id is None or close_id is None:
            raise ConfigError("thinking budgets need a tokenizer with single <think> and </think> tokens")
        enc = lambda text: self.tok(text, add_special_tokens=False)["input_ids"] if text else []
        wait, prefix = enc(params.wait_text), enc(params.answer_prefix)
        budget = -1 if params.thinking_budget is None else params.thinking_budget
        # A chat template may already have opened the thinking in the prompt.
        p = prompt
        opened = open_id in p and (close_id not in p or p[::-1].index(open_id) < p[::-1].index(close_id))
        cap = row_cap(budget, limit, params.answer_reserve, len(prefix), opened)
        return ThinkingForcer(open_id, close_id, self.eos_id, cap, params.min_thinking, wait, prefix, opened)

    def _hits_stop(self, ids: list[int], stops: tuple[str, ...]) -> bool:
        tail = self.tok.decode(ids[-32:], skip_special_tokens=True)
        return any(tail.endswith(s) for s in stops)

    def _sample(self, i: int, j: int, prompt: list[int], ids: list[int], finish: str,
                logprobs: list[float] = ()) -> Sample:
        body = ids[:-1] if finish == "eos" else ids
        text = self.tok.decode(body, skip_special_tokens=True)
        think, answer = self.count_sections(body, text)
        return Sample(i, j, tuple(prompt), tuple(ids), text, finish, think, answer, tuple(logprobs))

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


@dataclass
class _Row:
    """One sequence of a running batch: sample `j` of request `rid`."""
    rid: int
    j: int
    prompt: list[int]
    params: SamplingParams
    limit: int
    u: list[float]  # the row's uniforms (limit of them), from its own generator
    forcer: ThinkingForcer | None
    first_step: int  # the batch step of the row's first token
    first_col: int = 0  # cache column of the row's first prompt token
    ids: list[int] = field(default_factory=list)
    finish: str | None = None  # None while running; "eos" | "stop" | "length" | "dropped"
    logprobs: list[float] = field(default_factory=list)  # with params.logprobs: one per token of ids


@dataclass(frozen=True)
class Token:
    """A token `step` emitted for sample `j` of request `rid`; `finish` is set on a row's last token."""
    rid: int
    j: int
    token: int
    finish: str | None


class Batch:
    """A running batch: requests join and leave between decode steps.

    Every row keeps its own generator stream, position counter and cache row, and its
    tokens depend on its own prompt, params and seed only; so a request gives the
    same tokens whether it runs alone or joins others mid-way (tested).

    Cache layout: one column timeline shared by all rows (`col` is the next column
    written). A joining request is prefilled so that its prompt ends at column
    `col - 1` (into free cache rows, in place, with the fast decoder); columns before
    its first token are masked out. Rows that finish or are dropped stay in the
    cache, masked and fed padding, until a quarter of the batch is dead: a cache copy
    is dearer than a few wasted rows.
    """

    def __init__(self, engine: Engine, max_rows: int | None = None, trim: bool = False):
        self.e, self.max_rows, self.trim = engine, max_rows, trim
        self.rows: list[_Row] = []  # one per cache row, dead rows included until compaction
        self.pending: list[list[_Row]] = []  # requests waiting for the next step's prefill
        self.finished: list[Sample] = []
        self.backend, self.logits, self.col, self.t = None, None, 0, 0
        self.forward_calls, self._next_rid = 0, 0

    @property
    def running(self) -> int:
        """Rows still generating or waiting to join."""
        return sum(r.finish is None for r in self.rows) + sum(len(g) for g in self.pending)

    def add(self, prompt_ids: list[int], params: SamplingParams, seeds: list[int], max_tokens: int | None = None) -> int:
        """Queue a request with one sample per seed; it joins at the next `step`. Returns its id."""
        limit = params.max_new_tokens if max_tokens is None else max_tokens
        if not prompt_ids:
            raise ConfigError("prompt_ids is empty; a request needs at least one prompt token")
        if limit < 1 or not seeds:
            raise ConfigError(f"a request needs max_tokens >= 1 and at least one seed, got {limit} and {len(seeds)}")
        rid, self._next_rid = self._next_rid, self._next_rid + 1
        rows = []
        for j, s in enumerate(seeds):
            u = torch.rand(limit, generator=torch.Generator().manual_seed(s)).tolist()
            rows.append(_Row(rid, j, list(prompt_ids), params, limit, u, self.e.forcer(prompt_ids, params, limit), 0))
        self.pending.append(rows)
        return rid

    def drop(self, rid: int) -> None:
        """Stop request `rid` now (e.g. its client went away): its rows produce no Sample."""
        self.pending = [g for g in self.pending if g[0].rid != rid]
        for r in self.rows:
            if r.rid == rid and r.finish is None:
                r.finish = "dropped"
        if not any(r.finish is None for r in self.rows):
            self._reset()

    def take_finished(self) -> list[Sample]:
        """Samples of rows that finished since the last call (their rows have left the batch)."""
        out, self.finished = self.finished, []
        return out

    @torch.no_grad()
    def step(self) -> list[Token]:
        """Admit waiting requests, then one decode step for every running row: the tokens emitted."""
        if self.pending:
            self._admit()
        if not self.rows:
            return []
        # the log-probs are taken before `_pick`, which bans tokens in place (forcing)
        logp = torch.log_softmax(self.logits.float(), -1) if any(r.params.logprobs for r in self.rows) else None
        tokens = self._pick()
        events = self._emit(tokens, logp)
        self.t += 1
        dev = self.e.device
        live = torch.tensor([r.finish is None for r in self.rows], device=dev)
        n_live = int(live.sum())
        if n_live == 0:
            self._reset()
            return events
        if n_live <= 0.75 * len(self.rows):
            keep = live.nonzero().flatten()
            self.rows = [self.rows[k] for k in keep.tolist()]
            trim = min(r.first_col for r in self.rows) if self.trim else 0
            trim = self.backend.select(keep, self.col, trim)
            for r in self.rows:
                r.first_col -= trim
            self.col -= trim
            tokens, live = tokens[keep], live[keep]
        tokens = tokens.masked_fill(~live, self.e.pad_id)
        pos = torch.tensor([len(r.prompt) + self.t - 1 - r.first_step for r in self.rows], device=dev)
        self.logits = self.backend.step(tokens, pos, start=self.col)
        self.col += 1
        self.forward_calls += 1
        return events

    # -- step parts --------------------------------------------------------------
    def _reset(self) -> None:
        # The backend (its cache buffer) is kept for the next request: a server's batch
        # empties and refills all the time, and allocating the buffer costs more than a step.
        self.rows, self.logits, self.col = [], None, 0

    def _pick(self) -> torch.Tensor:
        """One sampled token per cache row (dead rows' picks are ignored)."""
        logits = self.logits
        ban_rows, ban_ids, u = [], [], []
        groups: dict[tuple[float, float], list[int]] = {}
        for k, r in enumerate(self.rows):
            groups.setdefault((r.params.temperature, r.params.top_p), []).append(k)
            if r.finish is not None:
                u.append(0.0)
                continue
            u.append(r.u[len(r.ids)])
            if r.forcer is not None and (ban := r.forcer.banned()):  # e.g. no EOS right after </think>
                ban_rows.extend([k] * len(ban))
                ban_ids.extend(ban)
        if ban_rows:  # one indexing op for the whole batch, not one per row
            logits[ban_rows, ban_ids] = -float("inf")
        dev = self.e.device
        u = torch.tensor(u, device=dev)  # drawn on the CPU (same seed, same tokens on any device)
        if len(groups) == 1:
            ((temp, top_p),) = groups
            return pick_tokens(logits, u, temp, top_p)
        tokens = torch.empty(len(self.rows), dtype=torch.long, device=dev)
        for (temp, top_p), ks in groups.items():
            idx = torch.tensor(ks, device=dev)
            tokens[idx] = pick_tokens(logits[idx], u[idx], temp, top_p)
        return tokens

    def _emit(self, tokens: torch.Tensor, logp: torch.Tensor | None = None) -> list[Token]:
        """Apply forcing and the stop rules to each running row's token; record finished rows.
        `tokens` is updated in place: the model sees the forced token, not the sampled one.
        `logp` (B, V): the step's log-probs, recorded for the rows that ask (`params.logprobs`)."""
        events, picked, forced = [], tokens.tolist(), {}
        lps = logp.gather(1, tokens[:, None])[:, 0].tolist() if logp is not None else None
        for k, r in enumerate(self.rows):
            if r.finish is not None:
                continue
            tk = picked[k]
            if r.forcer is not None:
                tk = r.forcer.next(tk)
                if tk != picked[k]:
                    forced[k] = tk
            r.ids.append(tk)
            if r.params.logprobs:
                r.logprobs.append(lps[k] if tk == picked[k] else logp[k, tk].item())
            if tk == self.e.eos_id:
                r.finish = "eos"
            elif r.params.stop and self.e._hits_stop(r.ids, r.params.stop):
                r.finish = "stop"
            elif len(r.ids) >= r.limit:
                r.finish = "length"
            events.append(Token(r.rid, r.j, tk, r.finish))
            if r.finish is not None:
                self.finished.append(self.e._sample(r.rid, r.j, r.prompt, r.ids, r.finish, r.logprobs))
        if forced:
            tokens[list(forced)] = torch.tensor(list(forced.values()), device=tokens.device)
        return events

    def _admit(self) -> None:
        """Prefill the waiting requests together and join them to the running rows."""
        groups, self.pending = self.pending, []
        prompts = [g[0].prompt for g in groups]
        Lp = max(map(len, prompts))
        ids = torch.full((len(prompts), Lp), self.e.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), Lp), dtype=torch.long)
        for i, p in enumerate(prompts):  # left-pad so every prompt ends at the last column
            ids[i, Lp - len(p):] = torch.tensor(p)
            mask[i, Lp - len(p):] = 1
        dev = self.e.device
        ids, mask = ids.to(dev), mask.to(dev)  # built on the CPU, moved once
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        expand = torch.tensor([i for i, g in enumerate(groups) for _ in g], device=dev)  # each prompt's cache, once per sample
        new = [r for g in groups for r in g]
        self.forward_calls += 1
        if not self.rows:
            self.backend = self.backend or self.e._backend()
            self.logits = self.backend.prefill(ids, mask, pos, Lp + max(g[0].limit for g in groups),
                                               expand, self.max_rows)
            self.rows, self.col = new, Lp
            for r, i in zip(new, expand.tolist()):
                r.first_step, r.first_col = self.t, Lp - len(prompts[i])
            return
        live = [k for k, r in enumerate(self.rows) if r.finish is None]
        trim = min(self.rows[k].first_col for k in live)
        room = max([self.rows[k].limit - len(self.rows[k].ids) for k in live] + [r.limit for r in new])
        logits, kept, col, shift = self.backend.join(ids, mask, pos, expand, live, trim, self.col, room,
                                                    self.max_rows)
        self.rows = [self.rows[k] for k in kept]
        for r in self.rows:
            r.first_col += shift
        for r, i in zip(new, expand.tolist()):
            r.first_step, r.first_col = self.t, col - len(prompts[i])
        self.logits = torch.cat([self.logits[torch.tensor(kept, dtype=torch.long, device=dev)], logits])
        self.rows, self.col = self.rows + new, col


class _FastBackend:
    """Preallocated KV cache and ponder's own Llama-family forward (see `ponder.models.decoder`).

    The cache is a buffer with room for more rows and columns than in use; the rows in
    use are its first `n`, and `cache` is a view of them. A joining request is
    prefilled straight into the next free rows, ending at the shared column: no copy
    of the running rows. Only when rows or columns run out is the buffer reallocated,
    with the running rows' empty leading columns trimmed and spare room added.
    """

    def __init__(self, decoder: Decoder):
        self.dec, self.buf, self.n = decoder, None, 0

    @property
    def cache(self) -> KVCache:
        return self._rows(0, self.n)

    def _rows(self, lo: int, hi: int) -> KVCache:
        view = KVCache.__new__(KVCache)
        view.k, view.v = [k[lo:hi] for k in self.buf.k], [v[lo:hi] for v in self.buf.v]
        view.valid = self.buf.valid[lo:hi]
        return view

    def prefill(self, ids, mask, pos, max_len, expand, max_rows=None):
        """First rows of an empty batch; a buffer left by earlier rows is reused when it is big enough."""
        rows = len(expand)
        if self.buf is None or self.buf.valid.size(0) < rows or self.buf.valid.size(1) < max_len:
            self.buf = self.dec.new_cache(max(rows, max_rows or 0), max_len)
        self.n = 0
        return self._prefill_at(ids, mask, pos, start=0, expand=expand)

    def _prefill_at(self, ids, mask, pos, start, expand):
        """Prefill the prompts into rows n.. at columns start.., then repeat each per `expand`."""
        lo, (P, L) = self.n, ids.shape
        self.buf.valid[lo:lo + len(expand)] = False  # the rows may hold a finished row's keys
        if start == 0:
            logits = self.dec.forward(ids, pos, self._rows(lo, lo + P), start=0, valid=mask.bool())
        else:  # prefill in a cache of its own, then copy in: its attention spans the prompt, not `start` columns
            own = self.dec.new_cache(P, L)
            logits = self.dec.forward(ids, pos, own, start=0, valid=mask.bool())
            for dst, src in ((self.buf.k, own.k), (self.buf.v, own.v)):
                for d, x in zip(dst, src):
                    d[lo:lo + P, :, start:start + L] = x
            self.buf.valid[lo:lo + P, start:start + L] = own.valid
        self.n = lo + P
        if len(expand) > P:
            self._copy(lo + expand, lo)
            logits = logits[expand]
        self.n = lo + len(expand)
        return logits

    def _copy(self, src: torch.Tensor, dst: int, cols: int | None = None, trim: int = 0) -> None:
        """Rows `src` (in that order, repeats allowed) become rows dst.. (through a copy: they may overlap),
        their columns trim..cols-1 moved to 0..cols-trim-1. Later columns are written before they are read."""
        hi, c = dst + len(src), cols or self.buf.valid.size(1)
        for bufs in (self.buf.k, self.buf.v):
            for b in bufs:
                b[dst:hi, :, :c - trim] = b[src, :, trim:c]
        self.buf.valid[dst:hi, :c - trim] = self.buf.valid[src, trim:c]

    def select(self, keep, cols: int | None = None, trim: int = 0) -> int:
        """Keep rows `keep`, dropping the first `trim` columns; returns the columns dropped."""
        self._copy(keep, 0, cols, trim)
        self.n = len(keep)
        return trim

    def step(self, tokens, pos, start):
        return self.dec.forward(tokens[:, None], pos[:, None], self.cache, start=start)

    def join(self, ids, mask, pos, expand, live: list[int], trim: int, col: int, room: int,
             max_rows: int | None = None):
        """Add prompts at the shared column `col`; returns (their logits, rows kept, new col, column shift).
        `max_rows` (the batch's, when known) caps the spare rows a reallocation adds."""
        Lp, need = ids.size(1), len(expand)
        rows_cap, cols_cap = self.buf.valid.shape
        if Lp <= col and self.n + need <= rows_cap and col + room <= cols_cap:
            kept = list(range(self.n))
            return self._prefill_at(ids, mask, pos, col - Lp, expand), kept, col, 0
        used = col - trim
        keep = torch.tensor(live, dtype=torch.long, device=ids.device)
        if Lp <= used and len(live) + need <= rows_cap and used + room <= cols_cap:
            # it fits once finished rows and unused leading columns are gone: drop them in place
            self.select(keep, col, trim)
            return self._prefill_at(ids, mask, pos, used - Lp, expand), live, used, -trim
        new_col = max(used, Lp)
        width = new_col + room
        old = self.buf
        # Spare room, so that the next joins happen in place: twice the rows and the columns needed,
        # but no more rows than the batch will ever hold when it says (a cache row of SmolLM2-135M
        # costs 46 KB a column: doubling 64 rows of 700 columns adds 2 GB that may never be used).
        rows = 2 * (len(live) + need)
        if max_rows and len(live) + need <= max_rows:
            rows = min(rows, max_rows)
        self.buf = self.dec.new_cache(max(rows_cap, rows), width + max(64, width))
        for dst, src in ((self.buf.k, old.k), (self.buf.v, old.v)):
            for d, s in zip(dst, src):
                d[:len(live), :, new_col - used:new_col] = s[keep, :, trim:col]
        self.buf.valid[:len(live), new_col - used:new_col] = old.valid[keep, trim:col]
        self.n = len(live)
        return self._prefill_at(ids, mask, pos, new_col - Lp, expand), live, new_col, new_col - used - trim


class _HFBackend:
    """Any HF causal LM through its own forward and `DynamicCache`."""

    def __init__(self, model):
        self.model, self.cache, self.mask = model, None, None

    def prefill(self, ids, mask, pos, max_len, expand, max_rows=None):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        self.cache, self.mask = out.past_key_values, mask
        logits = out.logits[:, -1, :]
        if len(expand) > ids.size(0):  # share each prompt's cache across its samples
            self.select(expand)
            logits = logits[expand]
        return logits

    def select(self, keep, cols: int | None = None, trim: int = 0) -> int:
        """Keep rows `keep`; no columns are dropped (an HF cache is not trimmed here): returns 0."""
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]
        return 0

    def step(self, tokens, pos, start):
        self.mask = torch.cat([self.mask, torch.ones((len(tokens), 1), dtype=torch.long, device=self.mask.device)], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=pos[:, None],
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def join(self, ids, mask, pos, expand, live: list[int], trim: int, col: int, room: int,
             max_rows: int | None = None):
        """As `_FastBackend.join`; HF caches grow by concatenation, so the rows are always copied
        (and `max_rows` has nothing to cap)."""
        from transformers import DynamicCache
        new = _HFBackend(self.model)
        logits = new.prefill(ids, mask, pos, 0, expand)
        keep, Lp = torch.tensor(live, dtype=torch.long, device=ids.device), ids.size(1)
        used = col - trim
        new_col = max(used, Lp)
        pad = lambda x, left: torch.nn.functional.pad(x, (0, 0, left, 0))  # (B, H, S, D) on S
        layers = []
        for la, lb in zip(self.cache.layers, new.cache.layers):
            ka, va = la.keys[keep, :, trim:col], la.values[keep, :, trim:col]
            layers.append((torch.cat([pad(ka, new_col - used), pad(lb.keys, new_col - Lp)]),
                           torch.cat([pad(va, new_col - used), pad(lb.values, new_col - Lp)])))
        self.cache = DynamicCache(layers, config=self.model.config)
        ma = self.mask[keep, trim:col]
        self.mask = torch.cat([torch.nn.functional.pad(ma, (new_col - used, 0)),
                               torch.nn.functional.pad(new.mask, (new_col - Lp, 0))])
        return logits, live, new_col, new_col - used - trim
