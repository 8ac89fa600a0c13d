"""Benchmark: the update with each group's prompt run once (`share_prompt`) vs once per row.

    python bench/bench_shared_prompt.py [--model smollm2-135m] [--threads 2] [--groups 4] [--group-size 8]
                                        [--completion 80,200] [--micro-batch 8] [--micro-batch-tokens 2048]

The batch has the invoice recipe's shape: `--groups` real invoice prompts (the generator's documents in
the recipe's chat template, ~400-600 tokens) with `--group-size` completions each of random tokens
(lengths drawn from `--completion`), every advantage non-zero (nothing skipped). One warm-up update,
then the timed ones alternate on / off, `--repeats` each; printed: forward/backward seconds (median),
tokens run, and the weights' largest difference after one update from the same start (the update
is the same: tests/test_shared_prompt.py). The last line ends with the speed-up ratio.
A measurement, not a test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tomllib
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "invoices.toml"


def invoice_batch(tok, groups: int, group_size: int, completion: tuple[int, int], seed: int = 0):
    from ponder.engine.engine import Sample
    from ponder.rl.grpo import grpo_advantages
    from ponder.rl.train import RLBatch, pack
    from ponder.tasks import invoices as inv

    template = tomllib.loads(RECIPE.read_text())["task"]["template"]
    g = torch.Generator().manual_seed(seed)
    samples = []
    for p, row in enumerate(inv.examples("train", groups, seed=seed)):
        text = template.replace("{prompt}", row["prompt"])
        chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        prompt = tuple(tok(chat, add_special_tokens=False)["input_ids"])
        for k in range(group_size):
            n = int(torch.randint(completion[0], completion[1] + 1, (1,), generator=g))
            samples.append(Sample(p, k, prompt, tuple(torch.randint(0, len(tok), (n,), generator=g).tolist()),
                                  "", "length", 0, n))
    ids, attn, comp = pack(samples, tok.pad_token_id or 0)
    rewards = torch.rand((groups, group_size), generator=g)
    return RLBatch(ids, attn, comp, grpo_advantages(rewards).reshape(-1),
                   groups=torch.arange(groups).repeat_interleave(group_size),
                   prompt_lens=torch.tensor([len(s.prompt_ids) for s in samples]))


def one_update(model, batch, share: bool, a) -> tuple[float, float, torch.nn.Module]:
    from ponder.core.timing import Phases
    from ponder.rl.grpo import AGGREGATIONS
    from ponder.rl.train import RLConfig, update_policy

    cfg = RLConfig(prompts_per_step=a.groups, group_size=a.group_size, precision=a.precision, lr=1e-6,
                   micro_batch=a.micro_batch, micro_batch_tokens=a.micro_batch_tokens, share_prompt=share)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    phases = Phases()
    stats = update_policy(model, None, opt, batch, cfg, AGGREGATIONS["token"], phases=phases)
    return phases.seconds["fwd_bwd"], stats["update_tokens"], model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--completion", default="80,200", help="min,max completion tokens")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--micro-batch-tokens", type=int, default=2048)
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from ponder.models.model import load_model

    model, tok = load_model(a.model)
    model.train()
    lo, hi = map(int, a.completion.split(","))
    batch = invoice_batch(tok, a.groups, a.group_size, (lo, hi))
    P = batch.prompt_lens.float().mean().item()
    print(f"{a.model}, {a.threads} threads, {a.precision}: {a.groups} groups x {a.group_size}, prompts "
          f"{P:.0f} tokens on average, completions {lo}-{hi}; micro_batch {a.micro_batch}, "
          f"micro_batch_tokens {a.micro_batch_tokens}")
    start = copy.deepcopy(model.state_dict())
    after = {}
    for share in (True, False):  # same start, one update each: the update is the same
        model.load_state_dict(start)
        one_update(model, batch, share, a)
        after[share] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    diff = max((after[True][k] - after[False][k]).abs().max().item() for k in start)
    seconds, tokens = {True: [], False: []}, {}
    for _ in range(a.repeats):
        for share in (True, False):
            s, n, _ = one_update(model, batch, share, a)
            seconds[share].append(s)
            tokens[share] = n
    for share in (True, False):
        print(f"  share_prompt {'on ' if share else 'off'}: forward/backward {statistics.median(seconds[share]):6.2f} s "
              f"(runs {', '.join(f'{s:.2f}' for s in seconds[share])}), {tokens[share]:.0f} tokens run")
    print(f"  largest weight difference after one update from the same start: {diff:.2e}")
    ratio = statistics.median(seconds[False]) / statistics.median(seconds[True])
    print(f"shared prompt: forward/backward speed-up {ratio:.2f}x")


if __name__ == "__main__":
    main()
