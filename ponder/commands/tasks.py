"""`ponder tasks`: the built-in tasks, reasoning-gym's datasets, and how to bring your own."""

from __future__ import annotations

from ponder.tasks.spec import BUILTIN, build_task

BRING_YOUR_OWN = """\
your own task: a JSONL file of {"prompt": ..., "answer": ...} lines and a grader
  echo '{"prompt": "What is 2+3?", "answer": "5"}' > my.jsonl
  printf '[grader]\\nkind = "numeric"\\n' > grader.toml
  ponder train --task my.jsonl --grader grader.toml --model smollm2-135m
(grader kinds: string, regex, numeric, math, json_schema, code_tests, python, combine;
 or --grader module:function; in a recipe: a [task] table with data, grader, template, format, system)"""


def rg_count() -> int | None:
    """How many reasoning-gym datasets are installed (None without the package)."""
    try:
        from ponder.tasks.reasoning_gym import dataset_names
        return len(dataset_names())
    except Exception:  # not installed, or an incompatible version: the listing still works
        return None


def main(argv: list[str]) -> int:
    for name in BUILTIN:
        ex = build_task(name).examples("train", 1)[0]
        print(f"{name:12s} e.g. {ex.prompt.strip()!r} -> {ex.answer}")
    n = rg_count()
    print(f"rg:<dataset>  {n} reasoning-gym datasets, e.g. rg:leg_counting (list: python -c "
          f"'from reasoning_gym.factory import DATASETS; print(sorted(DATASETS))')" if n is not None else
          "rg:<dataset>  reasoning-gym datasets (pip install 'ponder[verifiers]' to use them)")
    print()
    print(BRING_YOUR_OWN)
    return 0
