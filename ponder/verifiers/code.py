"""Code verifier: run a solution against unit tests, or stdin/stdout cases, in the sandbox.

Unit tests follow the HumanEval convention: the solution defines a function,
the tests file defines ``check(candidate)`` (or asserts at top level on the
names the solution defines). HumanEval itself runs solution and tests in one
interpreter, so the solution can end the process with ``sys.exit(0)`` before
any assert, patch the test runner or ``builtins``, or return an object whose
``__eq__`` is always true. Here the decision is made outside the solution's
process:

1. The solution runs in one sandbox (``code_harness.py candidate``); it
   executes the code, then serves calls to the functions it defined over a
   pipe. It never sees the tests: they are not in its sandbox.
2. The tests run in a second, separate sandbox (``code_harness.py referee``),
   in a namespace where each of the solution's functions is a proxy that
   calls across the pipe. The tests reach it on its stdin, never as a file
   or on a command line. Return values cross as exact built-in types only
   (see ``code_harness.encode``), so objects with a rigged ``__eq__`` never
   reach the asserts, and whatever the solution patches, patches only its
   own process.
3. The referee writes ``PONDER-RESULT <nonce> {...}`` after the tests
   *return*, to a report pipe that only the referee holds: what anyone
   prints on stdout is not read. The nonce is made here per run and reaches
   only the referee (on its stdin). No such line (the solution exited, hung,
   crashed the tests) is never a pass.

Code runs only in a real sandbox (bubblewrap): without one, every verdict is
``invalid`` with a reason saying how to install it, unless the caller opts
in to ``backend="unsafe-subprocess"`` (see ``ponder/verifiers/sandbox.py``).

Status: ``correct`` when the tests return; ``wrong`` for everything the
solution can cause (a failed assert, an exception, an early exit, a timeout,
a value that is not plain data, a syntax error); ``invalid`` only when the
verifier itself failed (the sandbox would not start, the tests do not
compile, the tests passed something the harness cannot send, no sandbox).

Limits of the design: arguments are copies, so tests that check in-place
mutation of an argument cannot pass; a function returning a generator or a
user-defined object fails (``list(candidate(x)) == ...`` in a test will not
help); a call costs a pipe round trip (~0.1 ms).
"""

from __future__ import annotations

import argparse
import ast
import json
import secrets
import sys
from pathlib import Path

from ponder.verifiers import sandbox
from ponder.verifiers.sandbox import Limits, Program, SandboxError
from ponder.core.verdict import Verdict, correct, invalid, wrong
from ponder.verifiers import code_harness

_HARNESS = Path(code_harness.__file__).read_text(encoding="utf-8")


def verify_code(solution: str, tests: str, limits: Limits = Limits(), entry_point: str | None = None,
                helpers: str = "", backend: str = "auto") -> Verdict:
    """Run `tests` against `solution` in two joined sandboxes; see the module doc.

    `entry_point` names the function passed to `check()`; when None it is
    inferred (`infer_entry_point`). `helpers` is trusted code the tests may
    call, run on the tests' side (for HumanEval, the prompt).

    >>> verify_code("def add(a, b):\\n    return a + b\\n", "def check(f):\\n    assert f(2, 3) == 5\\n").status
    'correct'
    """
    problem = _compile_error(tests, "tests") or _compile_error(helpers, "helpers")
    if problem:
        return invalid(problem)
    checked = _checked_name(ast.parse(tests))
    if entry_point is None:
        entry_point = infer_entry_point(solution, tests)
    nonce = secrets.token_hex(16)
    candidate = Program({"harness.py": _HARNESS, "solution.py": solution}, "harness.py",
                        args=("candidate", "solution.py"))
    private = {"tests": tests, "helpers": helpers, "entry_point": entry_point or "", "nonce": nonce,
               "calls_check": checked is not None and checked == entry_point}
    referee = Program({"harness.py": _HARNESS}, "harness.py", stdin=json.dumps(private),
                      args=("referee",), report=True)
    try:
        solution_run, referee_run = sandbox.run_interactive(candidate, referee, limits, backend=backend)
    except SandboxError as exc:
        return invalid(f"sandbox failure: {exc}")
    result = _referee_result(referee_run.report, nonce)
    if result is not None:
        status, reason = result
        if status == "pass":
            return correct(reason)
        if status == "error":
            return invalid(f"harness: {reason}")
        if status == "gone":  # the solution's process ended: say why, if a limit did it
            reason += _how_it_ended(solution_run)
        return wrong(reason + _tail(solution_run.stderr))
    if solution_run.timed_out or referee_run.timed_out:
        return wrong(f"timed out after {limits.wall_seconds:g} s")
    return invalid(f"the tests process ended without a result (exit {referee_run.returncode})"
                   + _tail(referee_run.stderr))


def verify_io(solution: str, cases: list[tuple[str, str]], limits: Limits = Limits(),
              backend: str = "auto") -> Verdict:
    """Run a stdin/stdout program on each (input, expected output) case.

    Score is the fraction of cases passed (partial credit); the status is
    `correct` only if all pass. A case passes when the program exits 0 within
    the limits and its stdout equals the expected output up to trailing
    whitespace on each line and trailing blank lines. The comparison happens
    here, so nothing the program prints about itself counts.
    """
    if not cases:
        return invalid("no cases to run")
    failures = []
    for index, (given, expected) in enumerate(cases):
        try:
            run = sandbox.run_python({"main.py": solution}, "main.py", limits, stdin=given, backend=backend)
        except SandboxError as exc:
            return invalid(f"sandbox failure: {exc}")
        problem = _io_problem(run, expected)
        if problem:
            failures.append(f"case {index}: {problem}")
    passed = len(cases) - len(failures)
    if not failures:
        return correct(f"{passed}/{len(cases)} cases passed")
    return wrong(f"{passed}/{len(cases)} cases passed; first failure {failures[0]}", score=passed / len(cases))


def infer_entry_point(solution: str, tests: str) -> str | None:
    """The function `check()` should get.

    A tests file that calls ``check(name)`` at top level (HumanEval's own
    files end so) names it. Otherwise: the last top-level function of the
    solution that the tests do not mention (tests call helpers such as
    HumanEval's `encode_cyclic` directly, and the entry point only as
    `candidate`). None if the solution does not parse or defines no function.

    >>> infer_entry_point("def enc(s): ...\\ndef dec(s): ...", "def check(c):\\n    assert c(enc('a')) == 'a'")
    'dec'
    >>> infer_entry_point("def is_pal(s): ...\\ndef make_pal(s): ...", "def check(c): ...\\ncheck(make_pal)")
    'make_pal'
    """
    try:
        tests_tree = ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tests_tree = None  # reported as invalid by the caller
    named = _checked_name(tests_tree) if tests_tree is not None else None
    if named:
        return named
    try:
        functions = [node.name for node in ast.parse(solution).body
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # a solution that does not parse fails in the sandbox, with the reason
    used = {node.id for node in ast.walk(tests_tree) if isinstance(node, ast.Name)} if tests_tree else set()
    unused = [name for name in functions if name not in used]
    return (unused or functions or [None])[-1]


def _checked_name(tests_tree: ast.Module) -> str | None:
    """NAME in the tests' last top-level ``check(NAME)`` statement, if any."""
    named = None
    for node in tests_tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "check"
                and len(call.args) == 1 and not call.keywords and isinstance(call.args[0], ast.Name)):
            named = call.args[0].id
    return named


def normalize_output(text: str) -> str:
    """Trailing whitespace per line and trailing blank lines do not count.

    >>> normalize_output("1 2 \\n3\\n\\n") == normalize_output("1 2\\n3")
    True
    """
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _io_problem(run: sandbox.RunResult, expected: str) -> str:
    if run.timed_out:
        return "timed out"
    if run.truncated:
        return "output limit exceeded"
    if run.returncode != 0:
        return f"exit code {run.returncode}{_tail(run.stderr)}"
    if normalize_output(run.stdout) != normalize_output(expected):
        return f"expected {expected[:60]!r}, got {run.stdout[:60]!r}"
    return ""


def _compile_error(source: str, what: str) -> str:
    try:
        compile(source, f"{what}.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        return f"the {what} do not compile: {exc}"
    return ""


def _referee_result(stdout: str, nonce: str) -> tuple[str, str] | None:
    """The referee's last result line carrying this run's nonce, if any."""
    prefix = f"{code_harness.RESULT_TAG} {nonce} "
    for line in reversed(stdout.splitlines()):
        if line.startswith(prefix):
            try:
                data = json.loads(line[len(prefix):])
                return str(data["status"]), str(data["reason"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def _how_it_ended(run: sandbox.RunResult) -> str:
    """Why the solution's process ended, when a limit did it (the referee cannot see that)."""
    if run.truncated:
        return " (the solution passed the output limit)"
    signals = {128 + 9: "SIGKILL: CPU or memory limit", 128 + 24: "SIGXCPU: CPU limit", 128 + 25: "SIGXFSZ: file size limit"}
    return f" (the solution was killed by {signals[run.returncode]})" if run.returncode in signals else ""


def _tail(stderr: str, chars: int = 300) -> str:
    stderr = stderr.strip()
    return f"; stderr: ...{stderr[-chars:]}" if stderr else ""


# ---------------------------------------------------------------- CLI

EXIT_CODES = {"correct": 0, "wrong": 1, "invalid": 2}


def main(argv: list[str] | None = None) -> int:
    """`ponder verify code --solution FILE --tests FILE [--entry-point NAME] [--json] [--unsafe-sandbox]`.

    Says on stderr which sandbox runs the code. Exit 0 if correct, 1 if
    wrong, 2 if invalid (no sandbox included) or the input is bad.
    """
    parser = argparse.ArgumentParser(prog="ponder verify code",
                                     description="Run a Python solution against unit tests in a sandbox.")
    parser.add_argument("--solution", required=True, help="Python file defining the function(s)")
    parser.add_argument("--tests", required=True, help="Python file with check(candidate) or top-level asserts")
    parser.add_argument("--entry-point", default=None, help="function passed to check() (default: the tests' own check(NAME) line, else inferred)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: score, status, reason")
    parser.add_argument("--wall-seconds", type=float, default=Limits.wall_seconds, help="wall-clock limit")
    parser.add_argument("--unsafe-sandbox", action="store_true",
                        help="without bubblewrap, run the code in a plain subprocess anyway (NOT isolated; warns)")
    args = parser.parse_args(argv)
    backend = sandbox.UNSAFE if args.unsafe_sandbox else "auto"
    sources = {}
    for flag, path in (("--solution", args.solution), ("--tests", args.tests)):
        try:
            sources[flag] = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read {flag} file {path!r}: {exc.strerror if isinstance(exc, OSError) else exc}",
                  file=sys.stderr)
            return 2
    try:
        limits = Limits(wall_seconds=args.wall_seconds)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(sandbox.describe(backend), file=sys.stderr, flush=True)  # before any code runs
    verdict = verify_code(sources["--solution"], sources["--tests"], limits, args.entry_point, backend=backend)
    print(_format(verdict, args.json))
    return EXIT_CODES[verdict.status]


def _format(verdict: Verdict, as_json: bool) -> str:
    if as_json:
        return json.dumps({"score": verdict.score, "status": verdict.status, "reason": verdict.reason})
    return f"{verdict.status} (score {verdict.score:g}): {verdict.reason}"


if __name__ == "__main__":
    sys.exit(main())
