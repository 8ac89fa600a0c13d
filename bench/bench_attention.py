"""Benchmark: one decode step's grouped-query attention, torch's `enable_gqa` call vs
`ponder.models.decoder.attention` (each KV head's query heads laid out as its queries).

    python bench/bench_attention.py [--threads 1] [--batches 1,8,32,64] [--keys 100,600,1200]

SmolLM2-135M's attention shape (9 query heads, 3 KV heads, head dim 64), one query row, a random
padding mask, bf16 (the only dtype whose path changes); per batch and key count: milliseconds per call (mean of 30 after 3 warm-up
calls) and the largest difference of the outputs. The last line ends with the smallest and largest
speed-up. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ponder.models.decoder import attention


def ms_per_call(f, n: int = 30) -> float:
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--keys", default="100,600,1200")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    H, n_kv, hd = 9, 3, 64
    g = torch.Generator().manual_seed(0)
    ratios = []
    for dtype in (torch.bfloat16,):  # fp32 takes the plain call in `attention`: nothing to compare
        for S in map(int, a.keys.split(",")):
            for B in map(int, a.batches.split(",")):
                q = torch.randn(B, H, 1, hd, generator=g).to(dtype)
                k, v = (torch.randn(B, n_kv, S, hd, generator=g).to(dtype) for _ in range(2))
                ok = torch.rand(B, S, generator=g) > 0.1
                ok[:, -1] = True
                mask = ok[:, None, None, :]
                plain = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # noqa: E731
                ours = lambda: attention(q, k, v, mask)  # noqa: E731
                t_plain, t_ours = ms_per_call(plain), ms_per_call(ours)
                diff = (plain().float() - ours().float()).abs().max().item()
                if dtype == torch.bfloat16:
                    ratios.append(t_plain / t_ours)
                print(f"{str(dtype).split('.')[-1]:8s} batch {B:3d} keys {S:5d}: enable_gqa {t_plain:7.2f} ms, "
                      f"grouped {t_ours:7.2f} ms ({t_plain / t_ours:5.2f}x), max difference {diff:.1e}")
    print(f"bf16 decode attention speed-up: {min(ratios):.2f}x to {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
