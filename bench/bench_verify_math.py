"""Verdicts per second of the math verifier (Math-Verify in killable worker processes).

    python bench/bench_verify_math.py [--workers 2] [--n 600] [--hostile 0.0]

The answers are a fixed mix of what a policy writes: boxed integers,
fractions, radicals, expressions, sets, marker lines, right and wrong.
`--hostile` mixes in a share of answers built to hang SymPy (they are cut
off by the pre-checks or the time limit). Runs from a thread pool, the way
a trainer calls it while generation runs.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

from ponder.verifiers.math import MathConfig, MathPool, verify_math_many


def answer_mix(n: int, hostile: float, seed: int = 0) -> tuple[list[tuple[str, str]], list[bool]]:
    """(answer, gold) pairs and whether each answer is right."""
    rng = random.Random(seed)
    out, right = [], []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(2, 99)
        ok = rng.random() < 0.6
        kind = rng.randrange(6)
        hostile_now = rng.random() < hostile
        right.append(ok and not hostile_now)
        if hostile_now:
            out.append((rng.choice([r"\boxed{9^{9^{9^9}}}", "{" * 5000 + "1" + "}" * 5000, "1+" * 200_000]), str(a)))
        elif kind == 0:
            out.append((rf"\boxed{{{a if ok else a + 1}}}", str(a)))
        elif kind == 1:
            out.append((rf"\boxed{{\frac{{{a}}}{{{b}}}}}", f"{a if ok else a + 1}/{b}"))
        elif kind == 2:
            out.append((rf"\boxed{{{a}\sqrt{{2}}}}", rf"\sqrt{{{2 * a * a if ok else 2 * a * a + 1}}}"))
        elif kind == 3:
            out.append((f"The answer is $x^2 + {a}x$.", f"x(x+{a if ok else b})"))
        elif kind == 4:
            out.append((rf"\boxed{{\{{{a}, {b}\}}}}", rf"\{{{b}, {a if ok else a + 1}\}}"))
        else:
            out.append((f"Final answer: {a / 4}", rf"\frac{{{a if ok else a + 1}}}{{4}}"))
    return out, right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--n", type=int, default=600, help="answers to check")
    parser.add_argument("--hostile", type=float, default=0.0, help="share of answers built to hang the checker")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="per-check time limit")
    args = parser.parse_args()
    pairs, right = answer_mix(args.n, args.hostile)
    cfg = MathConfig(timeout_s=args.timeout_s)
    with MathPool(workers=args.workers) as pool:
        verify_math_many([("1", "1")] * args.workers, cfg, pool)  # start-up is not throughput
        start = time.monotonic()
        verdicts = verify_math_many(pairs, cfg, pool)
        elapsed = time.monotonic() - start
    statuses = Counter(v.status for v in verdicts)
    mismatches = sum(v.ok != r for v, r in zip(verdicts, right))
    print(f"workers={args.workers} answers={len(pairs)} hostile={args.hostile:g} statuses={dict(statuses)} "
          f"mismatches={mismatches} "
          f"seconds={elapsed:.1f} verdicts_per_s={len(pairs) / elapsed:.1f}")


if __name__ == "__main__":
    main()
