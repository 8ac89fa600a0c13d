"""`ponder compare A.json B.json`: is B better than A on the same problems, or is it noise?

Two `ponder eval --out` files of the same problems are matched row by row on
`id`; the paired difference in greedy accuracy (B - A) gets a 95% interval
(normal, on per-problem differences) and the exact McNemar p-value, with the
counts of problems only A and only B solved. Separate intervals on each
accuracy overlap long before a difference stops being noise; pairing on the
same problems is the fair test, and it says when two models tie.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ponder.core.config import ConfigError
from ponder.core.stats import paired_difference


def load_outcomes(path: str | Path) -> tuple[str, dict[str, bool]]:
    """(label, {problem id: greedy correct}) of an eval file, or ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"eval file {str(p)!r} does not exist; write one with `ponder eval --out FILE`")
    try:
        data = json.loads(p.read_text())
        rows = data["samples"]
        pairs = [(str(r["id"]), r["correct"]) for r in rows]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{str(p)!r} is not a `ponder eval --out` file (needs samples with 'id' and "
                          f"'correct')") from None
    outcomes = dict(pairs)
    if len(outcomes) != len(pairs):
        seen: set[str] = set()
        dup = next(i for i, _ in pairs if i in seen or seen.add(i))
        raise ConfigError(f"{str(p)!r} holds problem id {dup!r} more than once; rows cannot be paired")
    if len(outcomes) < 2:
        raise ConfigError(f"{str(p)!r} holds {len(outcomes)} problem(s); a comparison needs at least 2")
    bad = next((i for i, ok in pairs if not isinstance(ok, bool)), None)
    if bad is not None:
        raise ConfigError(f"{str(p)!r}: problem {bad!r} has 'correct' = {outcomes[bad]!r}, not true/false")
    return str(data.get("label") or p.stem), outcomes


def compare(a_path: str | Path, b_path: str | Path, z: float = 1.96) -> dict:
    """The paired comparison of two eval files (see `ponder.core.stats.paired_difference`)."""
    label_a, a = load_outcomes(a_path)
    label_b, b = load_outcomes(b_path)
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ConfigError(
            f"{str(a_path)!r} and {str(b_path)!r} hold different problems ({len(a)} vs {len(b)} ids; "
            f"{len(only_a)} only in A, e.g. {(only_a or ['-'])[0]!r}; {len(only_b)} only in B, e.g. "
            f"{(only_b or ['-'])[0]!r}); evaluate both on the same task, split, --problems and --seed")
    ids = list(a)
    result = paired_difference([a[i] for i in ids], [b[i] for i in ids], z)
    return {"a": {"file": str(a_path), "label": label_a}, "b": {"file": str(b_path), "label": label_b}, **result}


def format_comparison(r: dict) -> str:
    return (f"A = {r['a']['label']} ({r['a']['file']}): accuracy {r['acc_a']:.3f}\n"
            f"B = {r['b']['label']} ({r['b']['file']}): accuracy {r['acc_b']:.3f}\n"
            f"B - A = {r['diff']:+.3f}, 95% interval [{r['lo']:+.3f}, {r['hi']:+.3f}] on {r['n']} paired problems "
            f"(normal interval on per-problem differences)\n"
            f"only A solved {r['only_a']}, only B solved {r['only_b']}, both {r['both']}, neither {r['neither']}; "
            f"exact McNemar p = {r['mcnemar_p']:.3g}\n"
            + ("the interval contains 0: no measurable difference (a tie)" if r["lo"] <= 0 <= r["hi"]
               else f"{'B' if r['diff'] > 0 else 'A'} is better beyond the interval"))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="eval JSON of model A (`ponder eval --out`)")
    ap.add_argument("b", help="eval JSON of model B, on the same problems")
    ap.add_argument("--out", default="", help="also write the comparison as JSON here")
    args = ap.parse_args(argv)
    result = compare(args.a, args.b)
    print(format_comparison(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0
