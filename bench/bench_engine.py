"""Benchmark: ponder's engine against Hugging Face `generate` on the same model, prompts and sampling.

    python bench/bench_engine.py [--model smollm2-135m] [--batches 1,8,64] [--threads 2] [--max-new-tokens 128]
                                 [--ponder-precision fp32|bf16]

Both sample at T = 1 from the same chat-formatted arithmetic prompts up to `--max-new-tokens`
with a natural stop (EOS); tokens/s counts real tokens only (a row's tokens up to and
including its EOS, never the padding of finished rows). Each batch size runs both tools
side by side, ponder first, after one warm-up call each; the last line gives the ratio at
the largest batch. `--ponder-precision bf16` samples ponder from the bf16 weight copy
its RL rollouts use (`rollout_copy`; HF stays fp32, as its users run it on a CPU): a
different precision, printed in the header. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch

from ponder.engine.engine import Engine, SamplingParams, rollout_copy
from ponder.models.model import load_model
from ponder.tasks.spec import build_task, formatted
from ponder.inference.evaluate import EvalConfig


def prompts_for(tok, n: int) -> list[str]:
    task = formatted(build_task("arithmetic", "min_digits=1 max_digits=3 ops=add,mul"), tok, EvalConfig(model="x"))
    return [e.prompt for e in task.examples("test", n, seed=0)]


def ponder_tokens_per_s(engine: Engine, prompts: list[str], max_new: int) -> float:
    t = time.perf_counter()
    out = engine.generate(prompts, 1, SamplingParams(max_new_tokens=max_new, temperature=1.0), seed=0)
    return sum(len(g[0].ids) for g in out) / (time.perf_counter() - t)


@torch.no_grad()
def hf_tokens_per_s(model, tok, prompts: list[str], max_new: int) -> float:
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    t = time.perf_counter()
    out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new,
                         pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - t
    new = out[:, enc["input_ids"].size(1):]
    real = 0
    for row in new.tolist():  # up to and including the first EOS
        real += next((i + 1 for i, x in enumerate(row) if x == tok.eos_token_id), len(row))
    return real / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--ponder-precision", choices=("fp32", "bf16"), default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(a.model)
    engine = Engine(rollout_copy(model, a.ponder_precision), tok)
    batches = [int(b) for b in a.batches.split(",")]
    prompts = prompts_for(tok, max(batches))
    ponder_tokens_per_s(engine, prompts[:2], 8)  # warm-up
    hf_tokens_per_s(model, tok, prompts[:2], 8)
    print(f"{a.model}, T = 1, <= {a.max_new_tokens} new tokens, natural stop, {a.threads} threads; "
          f"ponder {a.ponder_precision} weights, HF fp32")
    ratio = None
    for b in batches:
        p = ponder_tokens_per_s(engine, prompts[:b], a.max_new_tokens)
        h = hf_tokens_per_s(model, tok, prompts[:b], a.max_new_tokens)
        ratio = p / h
        print(f"batch {b:3d}: ponder {p:8.1f} tok/s   HF generate {h:8.1f} tok/s   ratio {ratio:5.2f}x")
    print(f"ratio at batch {batches[-1]}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
