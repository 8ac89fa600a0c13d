"""Measurement: how far bf16 log-probs are from fp32 ones, in the sampler and in the update.

    python bench/precision_mismatch.py [--model smollm2-135m] [--prompts 8] [--samples 4] [--threads 1]

With `precision = "bf16"` ponder's rollouts sample from a bf16 copy of the policy (its own
decoder) and the update autocasts its matmuls, weights fp32. Neither computes the fp32
policy's numbers, nor each other's: the tokens are sampled from one distribution and trained
as if from another (the training-inference mismatch that `sampler_correction` weights for).

On the vs_trl work's first prompts (chat-formatted sums, T = 1), completions sampled by the
bf16 sampler with its log-probs recorded; then the same tokens scored teacher-forced by the
fp32 policy, by the update's autocast forward, and both again with the LM head in fp32 (a
head over a 50k vocabulary rounds its logits to bf16's 8 bits). Printed per pair: mean and
max |log-prob difference|, the mean difference, the 1st..99th percentile of the ratio
p_a / p_b (what an importance weight would be) and the correlation of the probabilities.
Numbers, not a test.
"""

from __future__ import annotations

import argparse

import torch

from vs_trl import shared_setup

from ponder.core import device as D
from ponder.engine.engine import Engine, SamplingParams, rollout_copy
from ponder.models.model import load_model
from ponder.rl.train import body_and_head, completion_logprobs, pack


def head_logprobs(body, head, ids, attn, sel, autocast: bool) -> torch.Tensor:
    """(B, L-1) log-probs of the next tokens at `sel`, the body's hidden state through an fp32 head."""
    ctx = D.autocast() if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        h = body(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1][sel]
    lp = torch.log_softmax(head(h.float()).float(), -1).gather(-1, ids[:, 1:][sel][:, None])[:, 0]
    return torch.zeros(sel.shape).masked_scatter(sel, lp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder, _, examples = shared_setup(args.model, args.prompts, args.samples)
    model, tok = load_model(folder)
    model.eval().requires_grad_(False)
    sampler = rollout_copy(model, "bf16")
    engine = Engine(sampler, tok)
    prompts = [e.prompt for e in examples(0)]
    samples = [s for row in engine.generate(prompts, args.samples, SamplingParams(max_new_tokens=args.max_tokens,
                                                                                 logprobs=True), seed=3) for s in row]
    ids, attn, comp = pack(samples, engine.pad_id)
    sel = comp.bool()
    scored = {"sampler (bf16 copy, its decoder)": torch.zeros(comp.shape)}
    for i, s in enumerate(samples):
        start = len(s.prompt_ids) - 1
        scored["sampler (bf16 copy, its decoder)"][i, start:start + len(s.ids)] = torch.tensor(s.logprobs)
    with torch.no_grad():
        fp32 = completion_logprobs(model, ids, attn, comp)[0]
        with D.autocast():
            scored["update (bf16 autocast)"] = completion_logprobs(model, ids, attn, comp)[0]
        body, head = body_and_head(model)
        scored["update, fp32 head"] = head_logprobs(body, head, ids, attn, sel, autocast=True)
        scored["bf16 copy, fp32 head"] = head_logprobs(body_and_head(sampler)[0], head, ids, attn, sel, autocast=False)

    def line(name: str, a: torch.Tensor, b: torch.Tensor) -> str:
        d = (a - b)[sel]
        r = d.exp()
        corr = torch.corrcoef(torch.stack([a[sel].exp(), b[sel].exp()]))[0, 1].item()
        return (f"{name:52s} {d.abs().mean():.4f} {d.abs().max():7.3f} {d.mean():+.4f}   "
                f"{r.quantile(0.01):.3f}..{r.quantile(0.99):.3f}   {corr:.5f}")

    print(f"{int(sel.sum())} completion tokens of {len(samples)} samples (bf16 sampler, T = 1)")
    print(f"{'pair':52s} mean|d|   max|d|  mean d   ratio p1..p99   corr(p)")
    for name, lp in scored.items():
        print(line(f"{name} vs fp32", lp, fp32))
    print(line("update (bf16 autocast) vs sampler", scored["update (bf16 autocast)"],
               scored["sampler (bf16 copy, its decoder)"]))
    print(line("update, fp32 head vs bf16 copy, fp32 head", scored["update, fp32 head"], scored["bf16 copy, fp32 head"]))


if __name__ == "__main__":
    main()
