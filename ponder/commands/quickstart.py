"""`ponder quickstart --out DIR`: R1-Zero in miniature, end to end on a CPU.

1. load the built-in tiny base (built by `ponder pretrain` if it is missing)
2. evaluate it on the held-out split (greedy accuracy, thinking length, pass@k)
3. GRPO straight on the base — no SFT (R1-Zero)
4. evaluate the trained model the same way
5. write the report and DIR/summary.json, and print a before/after table
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ponder.core import config as C
from ponder.core.config import DEVICES, ConfigError, check_choices, option
from ponder.inference.evaluate import EvalConfig, evaluate, format_summary
from ponder.models.model import BUILTIN_BASE, load_model, resolve_model_path
from ponder.rl.train import RLConfig, train
from ponder.tasks.spec import build_task


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = option("runs/quickstart", "run directory")
    base: str = option("tiny", "starting model: 'tiny' (the built-in base) or an HF folder")
    task_options: str = option("min_digits=1 max_digits=5 ops=add,mul", "arithmetic task options")
    steps: int = option(60, "GRPO steps")
    prompts_per_step: int = option(16, "groups per GRPO step")
    group_size: int = option(8, "samples per prompt")
    lr: float = option(2e-4, "learning rate")
    max_new_tokens: int = option(128, "completion token limit")
    eval_problems: int = option(200, "held-out problems in each evaluation")
    eval_samples: int = option(8, "samples per problem for pass@k / maj@k")
    seed: int = option(0, "seed of everything")
    threads: int = option(1, "torch CPU threads; 1 (default) gives the same numbers on any machine "
                                     "and is fastest for this tiny model; 0 = torch's default")
    progress: bool = option(True, "show progress bars")
    device: str = option("auto", "where the model runs: auto (a GPU when torch sees one, else the CPU), cpu or cuda",
                         choices=DEVICES)

    def __post_init__(self):
        check_choices(self)
        if self.steps < 1 or self.eval_problems < 1:
            raise ConfigError(f"steps and eval_problems must be >= 1, got {self.steps}, {self.eval_problems}")


def _eval(model_path, task, qc: QuickstartConfig, label: str, out_dir: Path) -> dict:
    model, tok = load_model(model_path, device=qc.device)
    cfg = EvalConfig(task="arithmetic", task_options=qc.task_options, problems=qc.eval_problems,
                     samples=qc.eval_samples, max_new_tokens=qc.max_new_tokens, seed=qc.seed, label=label)
    result = evaluate(model, tok, task, cfg)
    (out_dir / "eval").mkdir(parents=True, exist_ok=True)
    (out_dir / "eval" / f"{label}.json").write_text(json.dumps(result, indent=1))
    print(format_summary(result))
    return result


def _table(before: dict, after: dict) -> str:
    b, a = before["summary"], after["summary"]
    rows = [("greedy accuracy", "accuracy", "{:.3f}"), ("mean thinking tokens", "mean_thinking_tokens", "{:.1f}"),
            ("self-check share", "self_check_frac", "{:.3f}")]
    lines = [f"{'':24s}{'before':>10s}{'after':>10s}"]
    for name, key, fmt in rows:
        lines.append(f"{name:24s}{fmt.format(b[key]):>10s}{fmt.format(a[key]):>10s}")
    for k in b.get("pass_at_k", {}):
        lines.append(f"{'pass@' + k:24s}{b['pass_at_k'][k]:>10.3f}{a['pass_at_k'][k]:>10.3f}")
    for k in b.get("maj_at_k", {}):
        lines.append(f"{'maj@' + k:24s}{b['maj_at_k'][k]:>10.3f}{a['maj_at_k'][k]:>10.3f}")
    return "\n".join(lines)


def quickstart(qc: QuickstartConfig) -> dict:
    t0 = time.time()
    C.set_threads(qc.threads)
    out = Path(qc.out)
    out.mkdir(parents=True, exist_ok=True)
    task = build_task("arithmetic", qc.task_options)
    base = resolve_model_path(qc.base)
    if base == BUILTIN_BASE and not (base / "model.safetensors").is_file():
        from ponder.stages.pretrain import PretrainConfig, pretrain
        print("the built-in base is missing; building it with `ponder pretrain` (defaults)")
        pretrain(PretrainConfig(out=str(base)))
    print("[1/4] evaluating the base model")
    before = _eval(base, task, qc, "before", out)
    print("[2/4] GRPO on the base, no SFT (R1-Zero)")
    rl = RLConfig(model=str(base), task="arithmetic", task_options=qc.task_options, out=str(out / "rl"),
                  steps=qc.steps, prompts_per_step=qc.prompts_per_step, group_size=qc.group_size, lr=qc.lr,
                  max_new_tokens=qc.max_new_tokens, seed=qc.seed, threads=qc.threads, progress=qc.progress,
                  device=qc.device, save_every=max(1, qc.steps // 4))
    model_dir = train(rl)
    print("[3/4] evaluating the trained model")
    after = _eval(model_dir, task, qc, "after", out)
    print("[4/4] writing the report")
    from ponder.commands.report import write_report
    # The report reads metrics from the RL run and evaluations from DIR/eval.
    (out / "metrics.jsonl").write_text((out / "rl" / "metrics.jsonl").read_text())
    report = write_report(out)
    summary = {
        "before": before["summary"], "after": after["summary"],
        "wall_seconds": round(time.time() - t0, 1), "model_dir": str(model_dir), "report": str(report),
        "config": asdict(qc),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n" + _table(before, after))
    print(f"\nwall time {summary['wall_seconds']:.0f} s; trained model: {model_dir}; report: {report}")
    return summary


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", help="TOML recipe with QuickstartConfig keys")
    C.add_arguments(ap, QuickstartConfig)
    args = ap.parse_args(argv)
    try:
        quickstart(C.from_args(QuickstartConfig, args, args.recipe, section="quickstart"))
    except KeyboardInterrupt:
        return 130
    return 0
