"""The two halves of the code-test harness. Runs inside the sandboxes; stdlib only.

This file is copied into two separate sandboxes (see ``ponder/verifiers/code.py``):

* ``python harness.py candidate SOLUTION READ_FD WRITE_FD`` runs the untrusted
  solution and then serves calls to the functions it defined;
* ``python harness.py referee REPORT_FD READ_FD WRITE_FD`` reads its private
  input -- a JSON object with the tests, the helpers, the entry point and a
  nonce -- from stdin (so none of it is on a command line or in a file), runs
  the tests, with every name the solution defined replaced by a proxy that
  calls across the pipe, and writes ``PONDER-RESULT <nonce> {json}`` to
  REPORT_FD, a pipe only it holds, after the tests return.

Values cross the pipe as tagged JSON of exact built-in types (``type(v) is
int``, not ``isinstance``), so a candidate can only ever hand the tests an
int, a str, a list...: an object with an always-true ``__eq__``, a subclass
of ``str`` or a lazy iterator does not get through. Arguments are copies, so
a function that mutates its arguments in place is not seen to do so.
"""

import builtins
import contextlib
import importlib
import json
import os
import sys
import types

MAX_MESSAGE_BYTES = 16 << 20  # one reply; bigger is the candidate's fault
MAX_DEPTH = 100  # nesting of containers in one value
RESULT_TAG = "PONDER-RESULT"
# Exceptions a candidate may raise "as themselves" in the tests, so that tests
# expecting e.g. ValueError still work. Control-flow exceptions are excluded.
_NOT_FORWARDED = {"StopIteration", "StopAsyncIteration", "GeneratorExit", "SystemExit", "KeyboardInterrupt"}


# Modules the tests may get by the solution's name for them: pure, no import side effects.
_SAFE_MODULES = frozenset(
    "array bisect calendar cmath collections collections.abc copy dataclasses datetime decimal enum "
    "fractions functools hashlib heapq itertools json math numbers operator random re statistics "
    "string sys textwrap time types typing unicodedata".split())


class WireError(ValueError):
    """A value that is not plain data, or a malformed message."""


# ---------------------------------------------------------------- the wire format

_SEQUENCES = {list: "l", tuple: "t", set: "S", frozenset: "F"}
_FROM_TAG = {tag: kind for kind, tag in _SEQUENCES.items()}


def encode(value, depth=0):
    """Plain built-in data -> JSON-able tagged lists. Anything else raises WireError.

    >>> encode((1, 'a', [2.5]))
    ['t', [['i', '0x1'], ['s', 'a'], ['l', [['f', '0x1.4000000000000p+1']]]]]
    """
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if value is None:
        return ["N"]
    if kind is bool:
        return ["b", value]
    if kind is int:
        return ["i", hex(value)]  # hex: exact, and exempt from the int-to-str digit limit
    if kind is float:
        return ["f", value.hex()]  # exact, including inf and nan
    if kind is complex:
        return ["c", value.real.hex(), value.imag.hex()]
    if kind is str:
        return ["s", value]
    if kind is bytes:
        return ["y", value.hex()]
    if kind in _SEQUENCES:
        return [_SEQUENCES[kind], [encode(item, depth + 1) for item in value]]
    if kind is dict:
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise WireError(f"type {kind.__module__}.{kind.__qualname__} is not plain data "
                    "(None, bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict)")


def decode(data, depth=0):
    """The inverse of `encode`; rejects anything `encode` would not have produced."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    if type(data) is not list or not data or type(data[0]) is not str:
        raise WireError(f"malformed value {str(data)[:80]!r}")
    tag, args = data[0], data[1:]
    try:
        if tag == "N" and not args:
            return None
        if tag == "b" and len(args) == 1 and type(args[0]) is bool:
            return args[0]
        if tag == "i" and len(args) == 1 and type(args[0]) is str:
            return int(args[0], 16)
        if tag == "f" and len(args) == 1 and type(args[0]) is str:
            return float.fromhex(args[0])
        if tag == "c" and len(args) == 2 and all(type(a) is str for a in args):
            return complex(float.fromhex(args[0]), float.fromhex(args[1]))
        if tag == "s" and len(args) == 1 and type(args[0]) is str:
            return args[0]
        if tag == "y" and len(args) == 1 and type(args[0]) is str:
            return bytes.fromhex(args[0])
        if tag in _FROM_TAG and len(args) == 1 and type(args[0]) is list:
            return _FROM_TAG[tag](decode(item, depth + 1) for item in args[0])
        if tag == "d" and len(args) == 1 and type(args[0]) is list:
            pairs = args[0]
            if not all(type(p) is list and len(p) == 2 for p in pairs):
                raise WireError("malformed dict")
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in pairs}
    except (TypeError, ValueError, OverflowError) as exc:  # unhashable key, bad hex, ...
        raise WireError(f"malformed {tag!r} value: {exc}") from None
    raise WireError(f"malformed value with tag {tag!r}")


class Channel:
    """Newline-delimited JSON messages over a pair of pipe fds, with a size cap."""

    def __init__(self, read_fd, write_fd):
        self.reader = os.fdopen(read_fd, "rb")
        self.writer = os.fdopen(write_fd, "wb")

    def send(self, message):
        self.writer.write(json.dumps(message).encode() + b"\n")
        self.writer.flush()

    def receive(self):
        """The next message, or None at end of file. Raises WireError on garbage."""
        line = self.reader.readline(MAX_MESSAGE_BYTES + 1)
        if not line:
            return None
        if len(line) > MAX_MESSAGE_BYTES or not line.endswith(b"\n"):
            raise WireError(f"message longer than {MAX_MESSAGE_BYTES} bytes")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise WireError(f"message is not JSON: {exc}") from None
        if type(message) is not list or not message or type(message[0]) is not str:
            raise WireError(f"malformed message {line[:80]!r}")
        return message


# ---------------------------------------------------------------- candidate side (untrusted)

def describe(exc):
    return f"{type(exc).__name__}: {exc}"[:500]


def catalog(namespace):
    """What the solution defined, as the referee needs to know it."""
    entries = {}
    for name, value in namespace.items():
        if name.startswith("__"):
            continue
        if isinstance(value, types.ModuleType):
            entries[name] = ["module", value.__name__]
        elif isinstance(value, types.FunctionType):
            entries[name] = ["function"]
        elif callable(value):
            entries[name] = ["callable"]
        else:
            try:
                entries[name] = ["value", encode(value)]
            except WireError:
                continue  # not plain data: the tests cannot use it by value
    return entries


def serve_candidate(solution_path, channel):
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        with open(solution_path, encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit too: report it, the referee decides
        channel.send(["load_error", describe(exc)])
        return
    channel.send(["ready", catalog(namespace)])
    while True:
        try:
            message = channel.receive()
        except WireError:
            return
        if message is None or message[0] != "call" or len(message) != 4:
            return
        _, name, args, kwargs = message
        try:
            result = namespace[name](*decode(args), **decode(kwargs))
            reply = ["ok", encode(result)]
        except WireError as exc:
            reply = ["not_plain", str(exc)]
        except BaseException as exc:  # the function raised: the tests may expect that
            reply = ["raised", type(exc).__name__, str(exc)[:500]]
        channel.send(reply)


# ---------------------------------------------------------------- referee side (trusted)

class CandidateFailure(BaseException):
    """The candidate died, answered garbage or returned non-plain data.

    A BaseException, so tests that catch `Exception` cannot swallow it.
    """


class CandidateGone(CandidateFailure):
    """The solution's process ended (exit, crash, or killed at a limit)."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a built-in one."""


class HarnessError(Exception):
    """The tests asked for something the harness cannot do (not the candidate's fault)."""


def make_proxy(channel, name):
    def proxy(*args, **kwargs):
        try:
            request = ["call", name, encode(list(args)), encode(kwargs)]
        except WireError as exc:
            raise HarnessError(f"the tests passed {name}() an argument that is not plain data: {exc}") from None
        try:
            channel.send(request)
        except OSError:
            raise CandidateGone(f"the solution process is gone (calling {name})") from None
        try:
            reply = channel.receive()
        except WireError as exc:
            raise CandidateFailure(f"{name}() answered garbage: {exc}") from None
        if reply is None:
            raise CandidateGone(f"the solution process exited while running {name}()")
        if reply[0] == "ok" and len(reply) == 2:
            try:
                return decode(reply[1])
            except WireError as exc:
                raise CandidateFailure(f"{name}() answered garbage: {exc}") from None
        if reply[0] == "not_plain" and len(reply) == 2:
            raise CandidateFailure(f"{name}() returned a value whose {str(reply[1])[:300]}")
        if reply[0] == "raised" and len(reply) == 3 and all(type(r) is str for r in reply[1:]):
            kind = getattr(builtins, reply[1], None)
            if (isinstance(kind, type) and issubclass(kind, Exception) and kind.__name__ == reply[1]
                    and reply[1] not in _NOT_FORWARDED):
                raise kind(reply[2])
            raise CandidateError(f"{reply[1]}: {reply[2]}")
        raise CandidateFailure(f"{name}() answered garbage: {str(reply)[:80]}")

    proxy.__name__ = proxy.__qualname__ = name
    return proxy


def test_globals(channel, entries, entry_point):
    """The tests' namespace: proxies for the solution's callables, copies of its data.

    A solution name that shadows a built-in (`abs`, `len`, `isinstance`...) is
    left out, unless it is the entry point: otherwise a solution could define
    `abs = lambda x: 0` and pass `assert abs(candidate(x) - y) < 1e-6`.
    """
    namespace = {"__name__": "__tests__", "__builtins__": builtins}
    for name, entry in entries.items():
        if type(name) is not str or type(entry) is not list or not entry:
            raise CandidateFailure("the solution's catalog is malformed")
        if name in builtins.__dict__ and name != entry_point:
            continue
        if entry[0] in ("function", "callable"):
            namespace[name] = make_proxy(channel, name)
        elif entry[0] == "value" and len(entry) == 2:
            try:
                namespace[name] = decode(entry[1])
            except WireError as exc:
                raise CandidateFailure(f"the solution's value {name!r} is garbage: {exc}") from None
        elif entry[0] == "module" and len(entry) == 2 and entry[1] in _SAFE_MODULES:
            # Tests often lean on the solution's imports (`math.fabs`). Only a
            # fixed list: importing what the candidate names could run the
            # candidate's files, or a module like `venv.__main__`, on our side.
            namespace[name] = importlib.import_module(entry[1])
    return namespace


def run_tests(channel, tests_source, entry_point, helpers_source="", calls_check=False):
    """("pass" | "fail" | "gone" | "error", reason). Only a return from the tests is a pass.

    "gone": the solution's process ended; "error": the tests asked for the impossible.

    `helpers_source` is trusted code run in the tests' namespace first, so
    that helpers the tests call (HumanEval's `poly`, `encode_cyclic`) are the
    problem's own, not versions the solution redefined to please the tests.
    `calls_check`: the tests end in their own ``check(name)`` call (HumanEval's
    files do), so the harness does not call it a second time.
    """
    try:
        hello = channel.receive()
    except WireError as exc:
        return "fail", f"the solution answered garbage: {exc}"
    if hello is None:
        return "gone", "the solution exited before it was ready"
    if hello[0] == "load_error" and len(hello) == 2:
        return "fail", f"the solution raised {str(hello[1])[:300]}"
    if hello[0] != "ready" or len(hello) != 2 or type(hello[1]) is not dict:
        return "fail", f"the solution answered garbage: {str(hello)[:80]}"
    entries = hello[1]
    try:
        namespace = test_globals(channel, entries, entry_point)
        if helpers_source:
            exec(compile(helpers_source, "helpers.py", "exec"), namespace)
            if entry_point in entries:
                namespace[entry_point] = make_proxy(channel, entry_point)
        solution_check = namespace.get("check")
        exec(compile(tests_source, "tests.py", "exec"), namespace)
        check = namespace.get("check")
        if callable(check) and check is not solution_check:  # the tests' own check()
            if not entry_point:
                return "fail", "the solution defines no function for check() to test"
            if entries.get(entry_point, [None])[0] not in ("function", "callable"):
                return "fail", f"the solution does not define a function named {entry_point!r}"
            if not calls_check:
                check(namespace[entry_point])
    except HarnessError as exc:
        return "error", str(exc)
    except CandidateGone as exc:
        return "gone", str(exc)
    except CandidateFailure as exc:
        return "fail", str(exc)
    except AssertionError as exc:
        return "fail", f"a test failed{': ' + str(exc)[:300] if str(exc) else ''}"
    except BaseException as exc:  # anything else the tests raised, e.g. the candidate's ValueError
        return "fail", f"the tests raised {describe(exc)}"
    return "pass", "all tests passed"


def make_undumpable():
    """Best effort: no other process of our uid may read our memory or open our fds via /proc.

    Matters in the unsafe backend without root, where the solution runs as
    our uid: /proc/<pid>/fd/<report> would otherwise let it write the result.
    """
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def referee(private, report_fd, channel):
    """Run the tests given in `private` (the parsed stdin) and write the result to `report_fd`."""
    tests_source, helpers_source = private["tests"], private["helpers"]
    # What the tests print is dropped: it could include the candidate's answers,
    # and a flood would end this process before it can report.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        status, reason = run_tests(channel, tests_source, private["entry_point"], helpers_source,
                                   private.get("calls_check", False))
    line = f"{RESULT_TAG} {private['nonce']} {json.dumps({'status': status, 'reason': reason})}\n"
    with os.fdopen(report_fd, "w", encoding="utf-8") as report:
        report.write(line)


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "referee":
        make_undumpable()
        secrets_in = json.loads(sys.stdin.read())
        sys.stdin.close()
        referee(secrets_in, int(rest[0]), Channel(int(rest[1]), int(rest[2])))
    elif role == "candidate":
        serve_candidate(rest[0], Channel(int(rest[-2]), int(rest[-1])))
    else:
        raise SystemExit(f"unknown role {role!r}; expected 'candidate' or 'referee'")
