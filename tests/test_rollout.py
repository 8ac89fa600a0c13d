"""One rollout for every verb: same prompts everywhere, results independent of batching."""

from __future__ import annotations

import math

import pytest
import torch

from ponder.engine.engine import Engine, SamplingParams
from ponder.models.model import load_model, save_model
from ponder.rl.rollout import Group, rollout
from ponder.tasks import get_task
from ponder.tasks.spec import build_task, formatted

# An ASCII chat template the built-in character tokenizer can encode (an "instruct" tiny model).
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    model, tok = load_model("tiny")
    tok.chat_template = TEMPLATE
    return str(save_model(model, tok, tmp_path_factory.mktemp("chat-tiny")))


def _groups_equal(a: list[Group], b: list[Group]) -> bool:
    return all(x.example == y.example and [s.ids for s in x.samples] == [s.ids for s in y.samples]
               and x.verdicts == y.verdicts for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rollout_is_identical_at_chunk_sizes_1_7_and_64(temperature):
    model, tok = load_model("tiny")
    task = get_task("arithmetic", max_digits=3)
    examples = task.examples("test", 20, seed=3)
    engine = Engine(model, tok)
    params = SamplingParams(max_new_tokens=24, temperature=temperature)
    runs = [rollout(engine, task, examples, 3, params, seed=11, chunk=c).groups for c in (1, 7, 64)]
    assert _groups_equal(runs[0], runs[1]) and _groups_equal(runs[0], runs[2])
    assert [g.example.id for g in runs[0]] == [e.id for e in examples]
    if temperature:  # the seeds really differ per sample: not three copies of one stream
        assert len({tuple(s.ids) for g in runs[0] for s in g.samples}) > len(examples)


def test_rollout_rewards_mark_invalid_verdicts_nan():
    from ponder.core.verdict import invalid
    model, tok = load_model("tiny")
    task = get_task("arithmetic", max_digits=1)

    class Flaky(type(task)):
        def verify(self, completion, example):  # the checker fails on every second example
            return invalid("checker down") if int(example.answer) % 2 else super().verify(completion, example)

    flaky = Flaky(max_digits=1)
    groups = rollout(Engine(model, tok), flaky, flaky.examples("test", 6), 2, SamplingParams(8, 1.0), seed=0).groups
    for g in groups:
        odd = int(g.example.answer) % 2
        assert all(math.isnan(r) for r in g.rewards) == bool(odd) and g.valid == [not odd] * 2


def _capture_prompts(monkeypatch) -> list[str]:
    seen: list[str] = []
    original = Engine.encode

    def encode(self, prompt):
        seen.append(prompt)
        return original(self, prompt)

    monkeypatch.setattr(Engine, "encode", encode)
    return seen


def test_an_instruct_models_prompts_are_the_same_in_every_verb(chat_model, tmp_path, monkeypatch):
    """eval, scale, collect, train-prm and overthink all send the chat-templated prompt."""
    from ponder.inference.evaluate import EvalConfig, evaluate
    from ponder.inference.overthinking import main as overthink_main
    from ponder.inference.prm import PRMConfig, train_prm
    from ponder.inference.scale import ScaleConfig, scale
    from ponder.stages.collect import CollectConfig, collect

    common = dict(model=chat_model, task="arithmetic", task_options="max_digits=1", max_new_tokens=8, threads=1)
    model, tok = load_model(chat_model)
    task = formatted(build_task("arithmetic", "max_digits=1"), tok, EvalConfig(**common))
    seen = _capture_prompts(monkeypatch)
    runs = {
        "eval": lambda: evaluate(model, tok, build_task("arithmetic", "max_digits=1"),
                                 EvalConfig(**common, problems=3, samples=1)),
        "scale": lambda: scale(ScaleConfig(**common, problems=3, samples=2, budgets="none"), log=lambda *_: None),
        "collect": lambda: collect(CollectConfig(**common, prompts=3, k=2, out=str(tmp_path / "t.jsonl"),
                                                 readable=False, split="test")),
        "train-prm": lambda: train_prm(PRMConfig(**common, problems=3, rollouts=2, continuations=1,
                                                 out=str(tmp_path / "prm"))),
        "overthink": lambda: overthink_main(["--model", chat_model, "--task", "arithmetic", "--task-options",
                                             "max_digits=1", "--problems", "3", "--samples", "2",
                                             "--max-new-tokens", "8"]),
    }
    for verb, run in runs.items():
        seen.clear()
        try:
            run()
        except Exception as e:  # a verb may refuse a 3-problem run after sampling; its prompts are what count
            if not seen:
                raise AssertionError(f"{verb} failed before sampling: {e}") from e
        assert seen, f"{verb} sampled nothing"
        assert all(p.startswith("[user] What is ") and p.endswith("[assistant] ") for p in seen), (verb, seen[:2])
        split = "train" if verb == "train-prm" else "test"
        expected = {e.prompt for e in task.examples(split, 3, seed=0)}
        assert set(seen) == expected, (verb, sorted(set(seen))[:2], sorted(expected)[:2])


def test_grpo_masks_invalid_rows_instead_of_filling_them():
    """Mean and std over valid rows only: an invalid row must not shrink the std."""
    from ponder.rl.grpo import grpo_advantages, informative_groups, length_rewards
    r = torch.tensor([[1.0, 0.0, math.nan, math.nan]])
    adv = grpo_advantages(r)
    valid_only = grpo_advantages(torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(adv[0, :2], valid_only[0]) and adv[0, 2:].tolist() == [0.0, 0.0]
    filled = grpo_advantages(torch.tensor([[1.0, 0.0, 0.5, 0.5]]))  # the old fill-with-the-mean
    assert not torch.allclose(adv[0, :2], filled[0, :2])
    assert informative_groups(torch.tensor([[1.0, math.nan, math.nan]])).tolist() == [False]
    lam = length_rewards(torch.tensor([[10.0, 20.0, 500.0]]), torch.tensor([[True, True, False]]),
                         torch.tensor([[True, True, False]]))
    assert lam.tolist() == [[0.5, -0.5, 0.0]]  # the invalid 500-token row does not stretch the range
