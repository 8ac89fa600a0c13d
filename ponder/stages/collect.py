"""`ponder collect`: rejection sampling (STaR) — the traces a verifier accepts, as JSONL.

For each of `prompts` problems, sample `k` completions from a model, verify
each, and keep the accepted ones:

- `keep = "all"`: every correct sample (rejection-sampling SFT data);
- `keep = "shortest"`: the correct sample with the fewest thinking tokens
  per prompt ("long2short" distillation data);
- `budgets = "none,0,16,32"`: draw the k samples at each of these thinking
  budgets (see `ponder.budget`; "none" = the model's own length). A model
  trained by RL thinks at full length on every problem, so its own samples
  offer "shortest" little to choose from; samples whose thinking was cut at a
  budget and still ended correct show where less thinking suffices;
- `readable = true` also drops samples that are not well formed: one
  `<think>…</think>` block then a non-empty answer, ended by EOS, printable
  ASCII (the tiny task's "single language").

Samples whose text does not tokenize back to the sampled tokens are always
dropped: SFT on their text would not teach what the model produced.

Each line carries its provenance (model and its weights' sha256, task, prompt
id, seed, sample index, verdict), so a trace set can be traced back. The file
is written under a temporary name and renamed when complete: a killed run
never leaves a truncated trace file behind.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ponder.core import config as C
from ponder.rl.rollout import rollout
from ponder.tasks.spec import TaskFields, make_task
from ponder.core.config import RunFields, ConfigError, check_choices, option
from ponder.engine.budget import parse_budgets
from ponder.engine.engine import Engine, Sample, SamplingParams
from ponder.models.model import load_model, resolve_model_path
from ponder.core.think import format_score
from ponder.tasks.base import SPLITS, Example, Task
from ponder.core.verdict import Verdict

KEEP = ("all", "shortest")


@dataclass(frozen=True)
class CollectConfig(RunFields, TaskFields):
    model: str = option("tiny", "HF model folder to sample from ('tiny' = the built-in base)")
    split: str = option("train", "split the prompts come from (never collect on test)", choices=SPLITS)
    prompts: int = option(256, "number of problems")
    k: int = option(8, "samples per problem")
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling")
    max_new_tokens: int = option(128, "completion token limit")
    keep: str = option("all", "which accepted samples to keep per problem", choices=KEEP)
    readable: bool = option(True, "keep only well-formed <think>…</think>answer samples ended by EOS")
    budgets: str = option("none", "thinking budgets to draw the k samples at, comma-separated: none (the "
                          "model's own length), a token count, -1 (adaptive) or an effort level; k at each")
    min_budget_accuracy: float = option(0.0, "keep = shortest with several budgets: only budgets whose k "
                                        "samples were correct at least this often on the prompt compete "
                                        "(unless none was)")
    out: str = option("runs/traces.jsonl", "JSONL file to write")
    chunk: int = option(64, "prompts per generation batch")

    def __post_init__(self):
        check_choices(self)
        for name in ("prompts", "k", "max_new_tokens", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CollectConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.min_budget_accuracy <= 1:
            raise ConfigError(f"min_budget_accuracy must be in [0, 1], got {self.min_budget_accuracy}")
        parse_budgets(self.budgets, self.max_new_tokens)


def readable(sample: Sample) -> bool:
    """Well formed: exactly one think block then an answer, ended by EOS, printable ASCII."""
    text = sample.text
    return (sample.finish == "eos" and format_score(text) == 1.0
            and text.isascii() and all(c.isprintable() or c == "\n" for c in text))


def round_trips(tok, sample: Sample) -> bool:
    """Does the completion's text tokenize back to the sampled tokens?

    SFT trains on the text, so a sample that does not would teach other tokens
    than the model produced, or fail (a tokenizer may be unable to encode text
    its model can generate, e.g. a character outside a character vocabulary).
    """
    ids = list(sample.ids[:-1] if sample.finish == "eos" else sample.ids)
    try:
        return tok(sample.text, add_special_tokens=False)["input_ids"] == ids
    except Exception:  # `tokenizers` raises a plain Exception for text it cannot encode
        return False


def accept(samples: list[Sample], verdicts: list[Verdict], keep: str, need_readable: bool,
           encodable: list[bool] | None = None, budget_of: list | None = None,
           min_budget_accuracy: float = 0.0) -> list[int]:
    """Indices of the samples to keep from one prompt's group.

    Shortest means fewest thinking tokens, then fewest tokens overall, then the
    lowest sample index (so ties are broken deterministically). With samples
    drawn at several thinking budgets (`budget_of[i]` is sample i's), shortest
    only looks at budgets whose samples were correct at least
    `min_budget_accuracy` of the time on this prompt — a lucky direct answer
    would teach the model to skip thinking where it usually fails — unless no
    budget is that reliable.
    """
    encodable = encodable or [True] * len(samples)
    ok = [i for i, (s, v, e) in enumerate(zip(samples, verdicts, encodable))
          if e and v.status == "correct" and (readable(s) or not need_readable)]
    if keep == "shortest" and budget_of is not None and min_budget_accuracy > 0:
        correct = [v.status == "correct" for v in verdicts]
        rate = {b: sum(c for c, bb in zip(correct, budget_of) if bb == b) / budget_of.count(b) for b in set(budget_of)}
        reliable = [i for i in ok if rate[budget_of[i]] >= min_budget_accuracy]
        ok = reliable or ok
    if keep == "shortest" and ok:
        return [min(ok, key=lambda i: (samples[i].thinking_tokens, len(samples[i].ids), i))]
    return ok


def trace_row(ex: Example, s: Sample, v: Verdict, cfg: CollectConfig, model_sha: str,
              index: int, budget: int | None) -> dict:
    return {"prompt": ex.prompt, "completion": s.text, "prompt_id": ex.id, "answer": ex.answer,
            "sample_index": index, "thinking_budget": budget, "thinking_tokens": s.thinking_tokens,
            "finish": s.finish,
            "verdict": {"score": v.score, "status": v.status, "reason": v.reason},
            "model": cfg.model, "model_sha256": model_sha, "task": cfg.task,
            "task_options": cfg.task_options, "split": cfg.split, "seed": cfg.seed}


def collect(cfg: CollectConfig) -> dict:
    """Write the accepted traces to `cfg.out`; returns statistics of the collection."""
    from ponder.core.io import atomic_writer, sha256_file
    C.set_threads(cfg.threads)
    model, tok = load_model(cfg.model, device=cfg.device)
    task: Task = make_task(cfg, tok)  # the same prompts as train and eval
    weights = resolve_model_path(cfg.model) / "model.safetensors"
    model_sha = sha256_file(weights) if weights.is_file() else ""
    engine = Engine(model, tok)
    budgets = parse_budgets(cfg.budgets, cfg.max_new_tokens)
    budget_of = [b for b in budgets for _ in range(cfg.k)]  # sample j * k + s: budget j's s-th sample
    examples = task.examples(cfg.split, cfg.prompts, seed=cfg.seed)
    out = Path(cfg.out)
    n_samples = n_correct = n_kept = solved = kept_think = n_unencodable = 0
    with atomic_writer(out) as f:  # the trace file appears whole, or not at all
        for start in range(0, len(examples), cfg.chunk):
            chunk = examples[start:start + cfg.chunk]
            # seeds follow each problem's index in the whole collection, not in its chunk
            by_budget = [rollout(engine, task, chunk, cfg.k, SamplingParams(cfg.max_new_tokens, cfg.temperature,
                                                                            cfg.top_p, thinking_budget=b),
                                 seed=cfg.seed * 7_919 + 104_729 * j, index_offset=start).groups
                         for j, b in enumerate(budgets)]
            for i, ex in enumerate(chunk):
                group = [s for groups in by_budget for s in groups[i].samples]
                verdicts = [v for groups in by_budget for v in groups[i].verdicts]
                encodable = [round_trips(tok, s) for s in group]
                n_unencodable += len(group) - sum(encodable)
                kept = accept(group, verdicts, cfg.keep, cfg.readable, encodable, budget_of, cfg.min_budget_accuracy)
                n_samples += len(group)
                n_correct += sum(v.status == "correct" for v in verdicts)
                solved += bool(kept)
                n_kept += len(kept)
                for j in kept:
                    kept_think += group[j].thinking_tokens
                    f.write(json.dumps(trace_row(ex, group[j], verdicts[j], cfg, model_sha, j, budget_of[j])) + "\n")
        if n_kept == 0:
            raise ConfigError(f"collect: none of {n_samples} samples from {cfg.model!r} was accepted "
                              f"(keep={cfg.keep}, readable={cfg.readable}); nothing to train on")
    stats = {"prompts": len(examples), "samples": n_samples, "correct_frac": n_correct / n_samples,
             "prompts_solved_frac": solved / len(examples), "kept": n_kept, "dropped_unencodable": n_unencodable,
             "kept_mean_thinking_tokens": kept_think / n_kept, "out": str(out), "sha256": sha256_file(out)}
    out.with_name(out.name + ".stats.json").write_text(json.dumps({"config": asdict(cfg), **stats}, indent=1))
    return stats


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder collect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", help="TOML recipe with CollectConfig keys (top level or [collect])")
    C.add_arguments(ap, CollectConfig)
    args = ap.parse_args(argv)
    stats = collect(C.from_args(CollectConfig, args, args.recipe, section="collect"))
    print(f"kept {stats['kept']} traces from {stats['samples']} samples "
          f"({stats['prompts_solved_frac']:.0%} of {stats['prompts']} prompts solved, "
          f"mean thinking tokens {stats['kept_mean_thinking_tokens']:.1f}) -> {stats['out']}")
    return 0
