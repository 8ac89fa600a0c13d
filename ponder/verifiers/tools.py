"""Tools a model calls inside its thinking: a calculator, sandboxed Python, and user functions.

A call is written in the completion as `<tag>argument</tag>`; the rollout loop
(`ponder.rl.tool_rollout`) pauses the row at the closing tag, runs the tool and
appends its result as `<output>…</output>` before the row decodes on:

    <think><calc>48.25*3</calc><output>144.75</output> so the total is ...

Built-in tools (`ToolFields.tools`, comma-separated):

- `calculator` (tag `calc`): exact decimal arithmetic on a parsed expression --
  numbers, `+ - * / ( )` and unary minus, nothing else; never `eval`.
- `python` (tag `python`): a cell of Python run in ponder's sandbox
  (`ponder.verifiers.sandbox`) with time, memory and output limits; what it
  prints -- and the value of a last bare expression, as in a notebook -- is the
  output. A hang, a flood of output or a crash gives an `error: …` output and the
  episode goes on. Refused without a real sandbox (bubblewrap) unless the
  recipe says `tool_sandbox = "unsafe-subprocess"` in so many words.
- user tools, `name=module:function` or `name=file.py:function`: trusted Python
  called in-process with the argument text, returning the output text (tag `name`).

Every failure a call can cause is an `error: …` output for the model to read,
never an exception in the run: `ToolResult.error` marks it for the metrics.
"""

from __future__ import annotations

import ast
import decimal
import re
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ponder.core.config import ConfigError, option
from ponder.verifiers import sandbox
from ponder.verifiers.sandbox import Limits, SandboxError

OUTPUT_OPEN, OUTPUT_CLOSE = "<output>", "</output>"
BUILTIN_TAGS = {"calculator": "calc", "python": "python"}
RESERVED_TAGS = ("output", "think")
_TAG = re.compile(r"[a-z][a-z0-9_]*")


class ToolError(Exception):
    """A call the tool cannot answer; its message becomes the `error: …` output."""


@dataclass(frozen=True)
class ToolFields:
    """Tool settings, declared once so every verb that generates can take them."""
    tools: str = option("", "tools the model may call while it thinks, comma-separated: calculator "
                        "(<calc>…</calc>), python (<python>…</python>, sandboxed), and user tools as "
                        "name=module:function; empty = no tools")
    max_tool_calls: int = option(4, "tool calls allowed per completion; later calls get an error output")
    tool_sandbox: str = option("auto", "where python calls run: auto (bubblewrap, refused without it) or "
                               "unsafe-subprocess (a plain subprocess, opted in)", choices=sandbox.BACKENDS)
    tool_wall_seconds: float = option(5.0, "wall-clock limit of one python call")
    tool_cpu_seconds: float = option(2.0, "CPU-time limit of one python call")
    tool_memory_mb: int = option(256, "address-space limit of one python call")
    tool_output_bytes: int = option(4096, "a python call printing more than this is cut (a flood)")
    tool_output_chars: int = option(200, "longest output text appended to the completion (longer is cut)")

    def __post_init__(self):
        """Checks the tool list (a config that inherits these fields calls this from its own)."""
        parse_tools(self.tools)  # an unknown tool fails here, naming it and the valid ones
        if self.max_tool_calls < 0 or self.tool_output_chars < 16:
            raise ConfigError(f"max_tool_calls must be >= 0 and tool_output_chars >= 16, got "
                              f"{self.max_tool_calls}, {self.tool_output_chars}")


@dataclass(frozen=True)
class ToolResult:
    tag: str  # the tool called
    argument: str  # the text between the tags
    output: str  # what goes between <output> and </output>
    error: bool  # the call failed (bad input, crash, timeout, flood, refused)
    seconds: float  # wall time of the call


@dataclass(frozen=True)
class Tool:
    tag: str
    run: Callable[[str], str]  # argument -> output; raises ToolError for a call it cannot answer


# ------------------------------------------------------------------ calculator

CALC_DIGITS = 60  # + - * results are exact up to this many significant digits, or refused
DIVISION_DIGITS = 20  # a quotient that does not terminate is rounded to this many
MAX_EXPRESSION_CHARS = 1000
_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)")
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)


def calculate(expression: str) -> str:
    """Exact decimal arithmetic: numbers, + - * / ( ) and unary minus.

    >>> calculate("0.1 + 0.2")
    '0.3'
    >>> calculate("-(12.50 * 3) / 4")
    '-9.375'
    >>> calculate("__import__('os')")
    Traceback (most recent call last):
    ...
    ponder.verifiers.tools.ToolError: calculator: only numbers, + - * / ( ) and unary minus are allowed, not Call
    """
    text = expression.strip()
    if not text:
        raise ToolError("calculator: empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"calculator: expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ToolError(f"calculator: cannot parse {text[:60]!r}") from None
    try:
        value = _value(tree.body, text)
    except RecursionError:
        raise ToolError("calculator: expression nested too deeply") from None
    return format(value, "f")


def _value(node: ast.AST, source: str) -> decimal.Decimal:
    """The exact value of one node of a parsed expression (see `calculate`)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        literal = ast.get_source_segment(source, node) or ""
        if not _NUMBER.fullmatch(literal):  # 1e9, 0x10, 1_000, 2j: not plain decimals
            raise ToolError(f"calculator: {literal!r} is not a plain decimal number")
        return decimal.Decimal(literal)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, source)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _value(node.left, source), _value(node.right, source)
        return _apply(type(node.op), a, b)
    what = type(node.op if isinstance(node, (ast.BinOp, ast.UnaryOp)) else node).__name__  # Pow, Call, Name...
    raise ToolError(f"calculator: only numbers, + - * / ( ) and unary minus are allowed, not {what}")


def _apply(op: type, a: decimal.Decimal, b: decimal.Decimal) -> decimal.Decimal:
    if op is ast.Div:
        if b == 0:
            raise ToolError("calculator: division by zero")
        ctx = decimal.Context(prec=DIVISION_DIGITS)
        return ctx.divide(a, b)
    ctx = decimal.Context(prec=CALC_DIGITS, traps=[decimal.Inexact])  # never a silently rounded result
    try:
        return {ast.Add: ctx.add, ast.Sub: ctx.subtract, ast.Mult: ctx.multiply}[op](a, b)
    except decimal.Inexact:
        raise ToolError(f"calculator: the result has more than {CALC_DIGITS} digits") from None


# ------------------------------------------------------------------ python (sandboxed)

# Trusted runner, executed *inside* the sandbox next to the untrusted cell: it runs the
# cell and prints the value of a last bare expression, as a notebook does.
_RUNNER = """\
import ast, sys
source = open("cell.py", encoding="utf-8").read()
tree = ast.parse(source, "cell.py")
last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
scope = {"__name__": "__main__"}
exec(compile(tree, "cell.py", "exec"), scope)
if last is not None:
    value = eval(compile(ast.Expression(last.value), "cell.py", "eval"), scope)
    if value is not None:
        print(repr(value))
"""


def python_tool(fields: ToolFields) -> Tool:
    """The sandboxed `python` tool; ConfigError when no sandbox may run here (see the module doc)."""
    if fields.tool_sandbox != sandbox.UNSAFE and sandbox.backend() != "bwrap":
        raise ConfigError(f"the python tool needs a sandbox: {sandbox.describe(fields.tool_sandbox)}")
    limits = Limits(cpu_seconds=fields.tool_cpu_seconds, wall_seconds=fields.tool_wall_seconds,
                    memory_mb=fields.tool_memory_mb, max_processes=8, max_file_mb=1,
                    max_output_bytes=fields.tool_output_bytes)
    return Tool("python", lambda code: run_cell(code, limits, fields.tool_sandbox))


def run_cell(code: str, limits: Limits, backend: str) -> str:
    """Run one cell in the sandbox: its output, or ToolError saying how it failed."""
    try:
        run = sandbox.run_python({"runner.py": _RUNNER, "cell.py": code}, "runner.py", limits, backend=backend)
    except SandboxError as exc:
        raise ToolError(f"python: no sandbox, the code was not run ({exc})") from None
    if run.timed_out:
        raise ToolError(f"python: timed out after {limits.wall_seconds:g} s")
    if run.truncated:
        raise ToolError(f"python: output passed {limits.max_output_bytes} bytes and the run was stopped")
    if run.returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL) and not run.stderr.strip():
        raise ToolError(f"python: stopped at the CPU-time limit ({limits.cpu_seconds:g} s)")
    if run.returncode != 0:
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        raise ToolError(f"python: {lines[-1].strip() if lines else f'exit status {run.returncode}'}")
    return run.stdout.strip()


# ------------------------------------------------------------------ the toolbox

def user_tool(name: str, spec: str, base_dir: Path | None = None) -> Tool:
    """A trusted user function `module:function` (or `file.py:function`) as tool `name`."""
    from ponder.verifiers.custom import load_function
    try:
        fn = load_function(spec, base_dir)
    except ConfigError as exc:
        raise ConfigError(f"tool {name!r}: {exc}") from None
    return Tool(name, lambda argument: str(fn(argument)))


def parse_tools(spec: str) -> list[tuple[str, str]]:
    """'calculator, lookup=mod:fn' -> [('calc', 'calculator'), ('lookup', 'mod:fn')]: (tag, what).

    >>> parse_tools("calculator,python")
    [('calc', 'calculator'), ('python', 'python')]
    """
    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, sep, target = item.partition("=")
        name = name.strip()
        if not sep and name not in BUILTIN_TAGS:
            raise ConfigError(f"unknown tool {name!r}; built-in tools: {', '.join(BUILTIN_TAGS)}, "
                              "or a user tool as name=module:function")
        tag = BUILTIN_TAGS[name] if not sep else name
        if sep and (not _TAG.fullmatch(tag) or tag in RESERVED_TAGS or tag in BUILTIN_TAGS.values()):
            raise ConfigError(f"user tool name {tag!r} must match [a-z][a-z0-9_]* and not be one of "
                              f"{', '.join(RESERVED_TAGS + tuple(BUILTIN_TAGS.values()))}")
        if any(t == tag for t, _ in out):
            raise ConfigError(f"tool {tag!r} is listed twice in {spec!r}")
        out.append((tag, target.strip() if sep else name))
    return out


def tool_names(spec: str) -> dict[str, str]:
    """The name a served request asks for each tool by -> its tag: a built-in's own name, a user
    tool's name.

    >>> tool_names("calculator, lookup=mod:fn")
    {'calculator': 'calc', 'lookup': 'lookup'}
    """
    return {(what if what in BUILTIN_TAGS else tag): tag for tag, what in parse_tools(spec)}


class Toolbox:
    """The tools of one run, found by tag; `find_call` spots a finished call, `call` runs it."""

    def __init__(self, tools: list[Tool], max_calls: int, output_chars: int = 200):
        self.tools = {t.tag: t for t in tools}
        self.max_calls, self.output_chars = max_calls, output_chars
        self.stops = tuple(f"</{tag}>" for tag in self.tools)  # where a row pauses

    @classmethod
    def from_fields(cls, fields: ToolFields, base_dir: Path | None = None) -> "Toolbox | None":
        """The toolbox a config asks for, or None when it names no tools."""
        pairs = parse_tools(fields.tools)
        if not pairs:
            return None
        built = {"calculator": lambda: Tool("calc", calculate), "python": lambda: python_tool(fields)}
        tools = [built[what]() if what in built else user_tool(tag, what, base_dir) for tag, what in pairs]
        return cls(tools, fields.max_tool_calls, fields.tool_output_chars)

    def subset(self, tags: tuple[str, ...]) -> "Toolbox":
        """The same tools and limits, only `tags` (a served request enables some of the server's)."""
        return Toolbox([self.tools[t] for t in tags], self.max_calls, self.output_chars)

    def with_stops(self, params):
        """`params` (SamplingParams) with the tools' closing tags added to its stop strings."""
        return replace(params, stop=tuple(params.stop) + tuple(s for s in self.stops if s not in params.stop))

    def find_call(self, text: str) -> tuple[str, str] | None:
        """(tag, argument) when `text` ends with a tool's closing tag, else None.

        The argument is everything after the last opening tag (empty if there is none).

        >>> Toolbox([Tool("calc", calculate)], 4).find_call("<think>so <calc>2+3</calc>")
        ('calc', '2+3')
        """
        for tag in self.tools:
            close = f"</{tag}>"
            if text.endswith(close):
                body = text[: -len(close)]
                start = body.rfind(f"<{tag}>")
                return tag, (body[start + len(tag) + 2:] if start >= 0 else "")
        return None

    def call(self, tag: str, argument: str, calls_so_far: int) -> ToolResult:
        """Run one call; every failure becomes an error output (the episode goes on)."""
        t0 = time.perf_counter()
        if calls_so_far >= self.max_calls:
            output, error = f"error: at most {self.max_calls} tool calls per completion", True
        else:
            try:
                output, error = self.tools[tag].run(argument), False
            except ToolError as exc:
                output, error = f"error: {exc}", True
            except Exception as exc:  # a user tool's own bug: reported to the model, counted as an error
                output, error = f"error: {tag}: {type(exc).__name__}: {exc}", True
        if len(output) > self.output_chars:
            output = output[: self.output_chars - 5] + "[cut]"
        return ToolResult(tag, argument, output, error, time.perf_counter() - t0)


def output_text(result: ToolResult) -> str:
    """What the completion gets after the call: `<output>…</output>`."""
    return f"{OUTPUT_OPEN}{result.output}{OUTPUT_CLOSE}"
