"""Inference-only forward pass for Llama-family HF models, with a preallocated KV cache.

Why not HF's own forward: with `DynamicCache`, every decode step concatenates
each layer's keys and values onto the cache (copying the whole cache), and
rebuilds attention masks; for small models at RL batch sizes that overhead,
not the matmuls, dominates decode time on a CPU. This module reuses the HF
model's own weights and rotary embedding (nothing is converted or copied) and
writes each step's keys/values into a cache allocated once. Equality of its
logits with the HF forward is tested.

Supported: models whose decoder layers look like Llama's (Llama, SmolLM,
Mistral, Qwen2): `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, RMSNorms,
rotary embeddings, grouped-query attention. `supports(model)` tells; the
engine falls back to the HF forward for anything else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
except ImportError:  # pragma: no cover - very old transformers
    apply_rotary_pos_emb = None

_LAYER_ATTRS = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
_ATTN_ATTRS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_ATTRS = ("gate_proj", "up_proj", "down_proj", "act_fn")


def supports(model) -> bool:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if apply_rotary_pos_emb is None or layers is None or not len(layers):
        return False
    if not all(hasattr(inner, a) for a in ("embed_tokens", "norm", "rotary_emb")) or not hasattr(model, "lm_head"):
        return False
    layer = layers[0]
    if not all(hasattr(layer, a) for a in _LAYER_ATTRS):
        return False
    if not all(hasattr(layer.self_attn, a) for a in _ATTN_ATTRS):
        return False
    if any(hasattr(layer.self_attn, a) for a in ("q_norm", "k_norm")):
        return False  # Qwen3-style QK norms: not handled here
    if any(getattr(l.self_attn, "sliding_window", None) is not None for l in layers):
        return False  # sliding-window layers (Qwen2 keeps the attribute, None when attention is full)
    return all(hasattr(layer.mlp, a) for a in _MLP_ATTRS)


class KVCache:
    """Keys and values for B rows and up to S positions, per layer: (B, H_kv, S, D)."""

    def __init__(self, n_layers: int, batch: int, n_kv: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        shape = (batch, n_kv, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.valid = torch.zeros((batch, max_len), dtype=torch.bool, device=device)  # key positions holding real tokens

    @property
    def batch(self) -> int:
        return self.valid.size(0)

    def repeat_interleave(self, n: int) -> None:
        self.k = [k.repeat_interleave(n, 0) for k in self.k]
        self.v = [v.repeat_interleave(n, 0) for v in self.v]
        self.valid = self.valid.repeat_interleave(n, 0)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (a copy; call it rarely — see `Engine`)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.valid = self.valid[rows]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention of q (B, H, L, hd) over k, v (B, H_kv, S, hd) under `mask`
    (B, 1, L, S); grouped-query attention when H_kv < H (query head h reads KV head h // (H / H_kv)).

    One decode step in bf16 runs each KV head's query heads as that head's queries,
    (B, H_kv, H / H_kv, hd): the same kernel on the same numbers, but torch's CPU kernel with
    `enable_gqa` at one query row is 3.3-5.7x slower in bf16 (`bench/bench_attention.py`, one thread,
    batch 1-64, 100-1,200 keys). fp32 and prefill (L > 1) keep the plain call: in ad-hoc timings it
    was as fast or faster there."""
    B, H, L, hd = q.shape
    n_kv = k.size(1)
    if n_kv == H:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if L == 1 and q.dtype != torch.float32:
        o = F.scaled_dot_product_attention(q.view(B, n_kv, H // n_kv, hd), k, v, attn_mask=mask)
        return o.view(B, H, 1, hd)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


class Fused:
    """Linears that read the same input (q/k/v; gate/up) as one matmul, split after.

    Why: at decode shapes (one token per row) one wider bf16 matmul beats three narrow ones
    on a CPU (SmolLM2-135M shapes, 2 threads, in an ad-hoc timing: 1.3x at 64 rows, 1.7x at 1;
    fp32 gained nothing, so fp32 models are never fused and their numbers stay bit for bit).
    The fused weight is a copy, so it is rebuilt whenever a part's weight changed: its storage
    or its version counter, which every in-place write to the parameter bumps (an optimizer
    step, `copy_` in `rollout_copy`'s refresh, `load_state_dict`). A write through the
    `.data` alias bumps no counter: code that refreshes weights must write the parameters."""

    def __init__(self, linears):
        self.linears = linears
        self.sizes = [l.out_features for l in linears]
        self.key = None
        self.weight = self.bias = None

    @staticmethod
    def fusable(linears) -> bool:
        """Plain `nn.Linear`s (not LoRA-wrapped: their weight is not the whole layer), all with
        a bias or none, one dtype."""
        return (all(type(l) is torch.nn.Linear for l in linears)
                and len({l.bias is None for l in linears}) == 1 and len({l.weight.dtype for l in linears}) == 1)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = tuple((l.weight.data_ptr(), l.weight._version) for l in self.linears)
        if key != self.key:
            with torch.no_grad():
                self.weight = torch.cat([l.weight for l in self.linears])
                self.bias = None if self.linears[0].bias is None else torch.cat([l.bias for l in self.linears])
            self.key = key
        return F.linear(x, self.weight, self.bias).split(self.sizes, -1)


class Decoder:
    """`forward(ids, positions, cache, start)`: run L new tokens per row, writing cache columns start..start+L."""

    def __init__(self, model):
        if not supports(model):
            raise TypeError(f"{type(model).__name__} is not a Llama-family model this decoder supports")
        self.model = model
        inner = model.model
        self.embed, self.layers, self.norm, self.rotary = inner.embed_tokens, inner.layers, inner.norm, inner.rotary_emb
        self.lm_head = model.lm_head
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        # per layer, (q/k/v, gate/up) as `Fused` matmuls: bf16/fp16 weights on a CPU only (the
        # fused copies hold ~70% of the layers' weights again: on a GPU memory is dearer)
        self.fused = None
        if self.dtype != torch.float32 and self.device.type == "cpu":
            parts = [((l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj), (l.mlp.gate_proj, l.mlp.up_proj))
                     for l in self.layers]
            if all(Fused.fusable(a) and Fused.fusable(m) for a, m in parts):
                self.fused = [(Fused(a), Fused(m)) for a, m in parts]

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        # Under bf16 autocast keys/values come out of the projections in bf16: store them so,
        # which halves the cache traffic of every decode step.
        kind = self.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else self.dtype
        return KVCache(len(self.layers), batch, self.n_kv, max_len, self.head_dim, dtype, self.device)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the last new token of each row, (B, V).

        ids, positions: (B, L). `valid` (B, L) marks real (non-padding) new tokens; default all.
        """
        B, L = ids.shape
        end = start + L
        cache.valid[:, start:end] = True if valid is None else valid
        keys_ok = cache.valid[:, :end]  # (B, S)
        # (B, 1, L, S): a query sees valid keys at or before its own column.
        dev = ids.device
        causal = torch.ones((L, end), dtype=torch.bool, device=dev).tril(diagonal=start)
        mask = (keys_ok[:, None, :] & causal[None]).unsqueeze(1)
        if L > 1:  # padded query rows would see nothing; let them see themselves to avoid NaN
            diag = torch.zeros((L, end), dtype=torch.bool, device=dev)
            diag[torch.arange(L, device=dev), start + torch.arange(L, device=dev)] = True
            mask = mask | diag[None, None]
        h = self.embed(ids)  # (B, L, D)
        cos, sin = self.rotary(h, positions)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q, k, v = self.fused[i][0](x) if self.fused else (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
            q = q.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
            k = k.view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
            v = v.view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            cache.k[i][:, :, start:end] = k
            cache.v[i][:, :, start:end] = v
            o = attention(q, cache.k[i][:, :, :end], cache.v[i][:, :, :end], mask)  # (B, H, L, hd)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))
            x = layer.post_attention_layernorm(h)
            mlp = layer.mlp
            gate, up = self.fused[i][1](x) if self.fused else (mlp.gate_proj(x), mlp.up_proj(x))
            h = h + mlp.down_proj(mlp.act_fn(gate) * up)
        return self.lm_head(self.norm(h[:, -1]))  # (B, V)
