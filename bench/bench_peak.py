"""Benchmark: this CPU's matmul peak at the update's shapes, and the share of it the update reaches.

    python bench/bench_peak.py [--model smollm2-135m] [--threads 2] [--rows 32] [--precisions fp32,bf16]

1. Peak: `torch.mm` GFLOP/s in fp32 and in bf16 at every matmul shape of one
   forward/backward chunk of the update (SmolLM2-135M: hidden 576, KV 192,
   intermediate 1536, vocabulary 49152 on completion tokens only; M = the tokens of
   one micro-batch chunk as `ponder train` cuts them, `chunk_tokens`), forward
   (x W^T), input gradient (dY W) and weight gradient (dY^T x). The "mix" peak is the
   FLOP-weighted harmonic mean: the time those matmuls alone would take.
2. Achieved: `update_policy` on a batch of `--rows` chat prompts with completions of
   16..128 tokens (every advantage non-zero, so nothing is skipped), timed by the
   update's own breakdown (forward/backward seconds). FLOPs counted per token:
   2 x (body matmul weights) + 4 x layers x context x hidden (attention scores and
   values) for every token the body sees, plus 2 x hidden x vocab for each completion
   token's LM head; x 3 for forward + backward. Reported for real tokens (useful
   work) and for padded tokens (what the hardware did), next to the crude
   6 x params x tokens.
A measurement, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def mm_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """GFLOP/s of (m, k) @ (k, n) in `dtype`, best of repeated timing windows."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        n_calls, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds / 3:
            a @ b
            n_calls += 1
        best = max(best, 2 * m * k * n * n_calls / (time.perf_counter() - t) / 1e9)
    return best


def update_shapes(cfg, tokens: int, completion_tokens: int) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) of each matmul of one chunk's forward and backward."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = d // cfg.num_attention_heads * cfg.num_key_value_heads
    linear = [("q/o", d, d), ("k/v", d, kv), ("gate/up", d, f), ("down", f, d)]
    out = []
    for name, i, o in linear:
        out += [(f"{name} fwd", tokens, i, o), (f"{name} dX", tokens, o, i), (f"{name} dW", o, tokens, i)]
    c = completion_tokens
    return out + [("head fwd", c, d, v), ("head dX", c, v, d), ("head dW", v, c, d)]


def layer_counts(cfg) -> dict[str, int]:
    """How often each linear shape occurs per chunk: q and o, k and v, gate and up: twice per layer."""
    n = cfg.num_hidden_layers
    return {"q/o": 2 * n, "k/v": 2 * n, "gate/up": 2 * n, "down": n, "head": 1}


def peak_table(cfg, tokens: int, completion_tokens: int, dtype: torch.dtype) -> tuple[float, float, list]:
    """(best GFLOP/s, FLOP-weighted mix GFLOP/s, rows) at the update's shapes."""
    counts, rows, flops, secs = layer_counts(cfg), [], 0.0, 0.0
    for name, m, k, n in update_shapes(cfg, tokens, completion_tokens):
        g = mm_gflops(m, k, n, dtype)
        w = 2 * m * k * n * counts[name.split()[0]]
        flops, secs = flops + w, secs + w / (g * 1e9)
        rows.append((name, m, k, n, g))
    return max(r[-1] for r in rows), flops / secs / 1e9, rows


def body_weights(cfg) -> int:
    """Matmul weights of the decoder body (embedding lookup excluded: it is not a matmul)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    kv = d // cfg.num_attention_heads * cfg.num_key_value_heads
    return cfg.num_hidden_layers * (2 * d * d + 2 * d * kv + 3 * d * f)


def synthetic_batch(tok, rows: int, seed: int = 0):
    """An RLBatch of `rows` chat prompts with random completions of 16..128 tokens, advantages +-1."""
    from ponder.engine.engine import Sample
    from ponder.inference.evaluate import EvalConfig
    from ponder.rl.train import RLBatch, pack
    from ponder.tasks.spec import build_task, formatted

    task = formatted(build_task("arithmetic", "min_digits=1 max_digits=2 ops=add"), tok, EvalConfig(model="x"))
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i, ex in enumerate(task.examples("train", rows, seed=seed)):
        n = int(torch.randint(16, 129, (1,), generator=g))
        ids = tuple(torch.randint(0, len(tok), (n,), generator=g).tolist())
        samples.append(Sample(i, 0, tuple(tok(ex.prompt)["input_ids"]), ids, "", "length", 0, n))
    ids, attn, comp = pack(samples, tok.pad_token_id or 0)
    return RLBatch(ids, attn, comp, torch.where(torch.arange(rows) % 2 == 0, 1.0, -1.0))


def achieved(model, tok, rows: int, precision: str) -> dict:
    """Seconds and token counts of one timed update (after one warm-up update)."""
    from ponder.core.timing import Phases
    from ponder.rl.grpo import AGGREGATIONS
    from ponder.rl.train import RLConfig, update_policy

    cfg = RLConfig(prompts_per_step=rows // 2, group_size=2, precision=precision, lr=1e-7)
    batch = synthetic_batch(tok, rows)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7)
    model.train()
    update_policy(model, None, opt, batch, cfg, AGGREGATIONS["token"])  # warm-up
    phases = Phases()
    stats = update_policy(model, None, opt, batch, cfg, AGGREGATIONS["token"], phases=phases)
    ctx = batch.attn.sum(1).float()
    return {"seconds": phases.seconds["fwd_bwd"], "optimizer": phases.seconds["optimizer"],
            "tokens": stats["update_tokens"], "padded": stats["update_padded_tokens"],
            "completion": float(batch.comp.sum()), "mean_context": float((ctx * ctx).sum() / ctx.sum() / 2)}


def optimizer_seconds(model, fused: bool) -> float:
    """Seconds of one AdamW step over every parameter (random gradients), per-tensor loop or fused."""
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-9, betas=(0.9, 0.99), foreach=False, fused=fused or None)
    opt.step()  # allocates the moments
    t = time.perf_counter()
    opt.step()
    seconds = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=32, help="rows of the timed update")
    ap.add_argument("--precisions", default="fp32,bf16")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from ponder.models.model import load_model
    from ponder.rl.train import chunk_tokens

    model, tok = load_model(a.model)
    cfg = model.config
    M = chunk_tokens(model, -1)  # tokens of one forward/backward chunk, as the update cuts them
    sample = synthetic_batch(tok, a.rows)
    comp_share = float(sample.comp.sum() / sample.attn.sum())  # completion tokens' share (the LM head's M)
    params = sum(p.numel() for p in model.parameters())
    print(f"{a.model}: {params / 1e6:.1f}M parameters, body matmul weights {body_weights(cfg) / 1e6:.1f}M; "
          f"chunk M = {M} tokens; {a.threads} threads")
    for prec in a.precisions.split(","):
        best, mix, rows = peak_table(cfg, M, int(M * comp_share), DTYPES[prec])
        print(f"\n{prec} matmul peak at the update's shapes: best {best:7.1f} GFLOP/s, mix {mix:7.1f} GFLOP/s")
        for name, m, k, n, g in rows:
            print(f"  {name:12s} ({m:5d} x {k:5d}) @ ({k:5d} x {n:5d})  {g:7.1f} GFLOP/s")
        r = achieved(model, tok, a.rows, prec)
        per_token = 2 * body_weights(cfg) + 4 * cfg.num_hidden_layers * r["mean_context"] * cfg.hidden_size
        useful = 3 * (per_token * r["tokens"] + 2 * cfg.hidden_size * cfg.vocab_size * r["completion"])
        hardware = useful + 3 * per_token * (r["padded"] - r["tokens"])
        crude = 6 * params * r["tokens"]
        print(f"  update ({a.rows} rows, {r['tokens']:.0f} tokens, {r['padded']:.0f} padded, "
              f"{r['completion']:.0f} completion): forward/backward {r['seconds']:.2f} s, optimizer "
              f"{r['optimizer']:.2f} s")
        for label, fl in (("useful FLOPs", useful), ("incl. padding", hardware), ("6 x params x tokens", crude)):
            g = fl / r["seconds"] / 1e9
            print(f"  achieved ({label:20s}) {g:7.1f} GFLOP/s = {100 * g / mix:5.1f}% of the {prec} mix peak")
    loop, fused = optimizer_seconds(model, False), optimizer_seconds(model, True)
    print(f"\nAdamW step over {params / 1e6:.1f}M parameters: per-tensor loop {loop:.2f} s, fused {fused:.2f} s "
          f"({loop / fused:.1f}x; ponder train uses fused)")


if __name__ == "__main__":
    main()
