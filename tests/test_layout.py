"""The package's shape: no import cycle, no function over 80 lines, layers in folders.

Imports are read with `ast` (every `import` / `from ... import` anywhere in a module,
lazy ones inside functions included): a cycle through a lazy import is still a cycle
in the design, even when it happens not to deadlock at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ponder

ROOT = Path(ponder.__file__).parent
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(mod: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str, path: Path, known: set[str]) -> set[str]:
    """The ponder modules `mod` imports (a `from pkg import name` counts name when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, node, path.name == "__init__.py")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import ponder.x.y` of a name inside a module
                t = t.rpartition(".")[0]
            if t.startswith("ponder") and t != mod:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    graph = {m: imports_of(m, p, known) for m, p in mods.items()}
    # a package's __init__ running is not a dependency of its submodules on each other
    return {m: {t for t in ts if not (m.startswith(t + ".") and t in known and mods[t].name == "__init__.py")}
            for m, ts in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for mod, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{mod}.{node.name} ({n} lines)")
    return out


def test_no_function_over_80_lines():
    assert long_functions() == []


def test_long_function_check_sees_one():
    assert long_functions(limit=3), "a 3-line limit must flag functions"


# bottom to top: a layer may import only the layers before it in this list
LAYERS = ("core", "models", "engine", "verifiers", "tasks", "rl", "inference", "stages", "serve", "commands")


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_folders_exist(layer):
    assert (ROOT / layer / "__init__.py").is_file()


def test_top_level_holds_only_the_cli():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert top == ["__init__.py", "cli.py"] or top == ["__init__.py", "__main__.py", "cli.py"], top


def test_ground_floor_imports_nothing_above_it():
    """core/ is the ground floor: it may not import any other layer."""
    graph = import_graph()
    up = {m: {t for t in ts if not t.startswith("ponder.core") and t != "ponder"}
          for m, ts in graph.items() if m.startswith("ponder.core")}
    assert {m: ts for m, ts in up.items() if ts} == {}


def layer_violations() -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    out = []
    for mod, targets in import_graph().items():
        parts = mod.split(".")
        if len(parts) < 3 or parts[1] not in rank:
            continue
        for t in targets:
            tp = t.split(".")
            if len(tp) >= 3 and tp[1] in rank and rank[tp[1]] > rank[parts[1]]:
                out.append(f"{mod} imports {t} (a higher layer)")
    return sorted(out)


def test_layers_import_only_lower_layers():
    assert layer_violations() == []
