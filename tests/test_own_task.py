"""Bring your own task: a JSONL file and a grader TOML work in every verb, named one way.

The model is the built-in tiny base (raw prompts), the task a small file of sums
in the arithmetic task's own prompt form, so a few steps run in seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from run_files import metrics

from ponder.core.config import ConfigError, build, load_toml
from ponder.inference.evaluate import EvalConfig, eval_task, evaluate
from ponder.models.model import load_model
from ponder.rl.train import RLConfig, train
from ponder.stages.collect import CollectConfig, collect
from ponder.stages.sft import SFTConfig, gold_traces, sft
from ponder.tasks.spec import build_task, make_task

GRADER = '[grader]\nkind = "numeric"\n'


def write_sums(path: Path, n: int, seed: int, split: str | None = None) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            row = {"id": f"s{seed}-{i}", "prompt": f"{a}+{b}=?\n", "answer": str(a + b),
                   "kind": "carry" if a + b > 9 else "plain"}
            if split or i % 4 == 0:
                row["split"] = split or "test"
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def own(tmp_path):
    data = write_sums(tmp_path / "sums.jsonl", 48, seed=1)
    grader = tmp_path / "grader.toml"
    grader.write_text(GRADER)
    return {"task": str(data), "grader": str(grader)}


def test_one_constructor_for_every_way_of_naming_a_task(own, tmp_path):
    inline = {"kind": "numeric"}
    for grader in (own["grader"], inline):
        task = build_task(own["task"], "", grader)
        ex = task.examples("train", 2)[0]
        assert task.verify(f"<think></think>{ex.answer}", ex).status == "correct"
        assert task.verify("<think></think>-1", ex).status == "wrong"
    templated = build_task(own["task"], "", inline, template="Add these.\n{prompt}")
    ex = templated.examples("train", 1)[0]
    assert ex.prompt.startswith("Add these.\n") and ex.info["document"] in ex.prompt


def test_a_recipe_task_table_reaches_every_section(own, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[task]\ndata = "{own["task"]}"\ngrader = "{own["grader"]}"\nformat = "raw"\n\n'
                      f'[train]\nsteps = 2\n\n[eval]\nproblems = 5\n')
    rl = build(RLConfig, load_toml(recipe, "train"))
    ev = build(EvalConfig, load_toml(recipe, "eval"))
    for cfg in (rl, ev):
        assert (cfg.task, cfg.grader, cfg.prompt_format) == (own["task"], own["grader"], "raw")
    assert rl.steps == 2 and ev.problems == 5
    inline = tmp_path / "inline.toml"
    inline.write_text(f'[task]\ndata = "{own["task"]}"\n[task.grader]\nkind = "numeric"\nabs_tol = 0.5\n')
    assert build(RLConfig, load_toml(inline)).grader == {"kind": "numeric", "abs_tol": 0.5}


def test_train_on_a_jsonl_task(own, tmp_path):
    cfg = RLConfig(**own, out=str(tmp_path / "rl"), steps=2, prompts_per_step=4, group_size=2,
                   max_new_tokens=24, save_every=2, progress=False, tensorboard=False, threads=1)
    train(cfg)
    assert [m["step"] for m in metrics(tmp_path / "rl")] == [1, 2]
    assert (tmp_path / "rl" / "model" / "model.safetensors").is_file()


def test_eval_on_another_file_scores_every_line(own, tmp_path):
    held_out = write_sums(tmp_path / "held_out.jsonl", 12, seed=7, split="train")  # split is ignored with data
    cfg = EvalConfig(**own, data=str(held_out), samples=1, max_new_tokens=24, threads=1)
    model, tok = load_model("tiny")
    result = evaluate(model, tok, eval_task(cfg), cfg)
    s = result["summary"]
    assert s["n_problems"] == 12
    assert s["accuracy"] == sum(r["status"] == "correct" for r in result["samples"]) / 12
    assert s["mean_score"] == pytest.approx(sum(r["score"] for r in result["samples"]) / 12)
    kinds = s["by_info"]["kind"]
    assert sum(v["n"] for v in kinds.values()) == 12 and set(kinds) <= {"carry", "plain"}


def test_collect_and_sft_on_a_jsonl_task(own, tmp_path):
    out = tmp_path / "traces.jsonl"
    stats = collect(CollectConfig(**own, model="tiny", out=str(out), prompts=6, k=4, max_new_tokens=24,
                                  threads=1, readable=False))
    assert stats["kept"] == len(out.read_text().splitlines()) > 0
    cfg = SFTConfig(**own, gold=8, out=str(tmp_path / "sft"), epochs=1, batch_size=4, progress=False, threads=1)
    _, tok = load_model("tiny")
    traces = gold_traces(cfg, tok)
    task = make_task(cfg, tok)
    exs = task.examples("train", 8, seed=cfg.seed)
    assert [t.prompt for t in traces] == [e.prompt for e in exs]  # the prompts RL and eval see
    assert all(task.verify(t.completion, e).status == "correct" for t, e in zip(traces, exs))
    assert (sft(cfg) / "model.safetensors").is_file()


def test_scale_on_a_jsonl_task(own, tmp_path):
    from ponder.inference.scale import ScaleConfig, scale
    result = scale(ScaleConfig(**own, model="tiny", problems=4, samples=2, budgets="none", max_new_tokens=24,
                               threads=1), log=lambda *_: None)
    assert result["complete"] and result["entries"][0]["strategy"] == "greedy"


def test_pipeline_with_a_task_table(own, tmp_path):
    from ponder.stages.pipeline import run_pipeline
    recipe = tmp_path / "p.toml"
    recipe.write_text(
        f'[task]\ndata = "{own["task"]}"\ngrader = "{own["grader"]}"\n\n'
        '[pipeline]\neval_problems = 4\neval_samples = 1\nmax_new_tokens = 24\nthreads = 1\nprogress = false\n\n'
        '[[stage]]\nname = "rl"\nkind = "rl"\nmodel = "tiny"\nsteps = 1\nprompts_per_step = 2\ngroup_size = 2\n'
        'tensorboard = false\n')
    run_pipeline(recipe, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "rl" / "manifest.json").read_text())
    assert manifest["config"]["task"] == own["task"] and manifest["config"]["grader"] == own["grader"]


# -- a grader the policy can game is refused before training --------------------------------------
def test_a_gameable_grader_is_refused_before_training(own, tmp_path):
    lenient = tmp_path / "lenient.toml"
    lenient.write_text('[grader]\nkind = "regex"\npattern = ".*"\n')  # any answer at all "matches"
    cfg = RLConfig(task=own["task"], grader=str(lenient), out=str(tmp_path / "rl"), steps=1, prompts_per_step=2,
                   group_size=2, max_new_tokens=8, progress=False, tensorboard=False)
    with pytest.raises(ConfigError, match=r"can be gamed \('echo the question' scores 1"):
        train(cfg)
    assert not (tmp_path / "rl" / "metrics.jsonl").exists()
    from dataclasses import replace
    train(replace(cfg, trust_grader=True))  # said in so many words: trained anyway
    assert (tmp_path / "rl" / "metrics.jsonl").is_file()


# -- bad input: one line naming the file, the line and the field -----------------------------------
@pytest.mark.parametrize("line, message", [
    ('{"answer": "3"}', r"sums.jsonl:2: missing field\(s\) prompt"),
    ('{"prompt": "1+2=?\\n"}', r"sums.jsonl:2: missing field\(s\) answer"),
    ('{"prompt": "1+2=?\\n", "answer": "3"', r"sums.jsonl:2: not valid JSON"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    data = tmp_path / "sums.jsonl"
    data.write_text('{"prompt": "1+1=?\\n", "answer": "2"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=message):
        build_task(str(data), "", {"kind": "numeric"})


def test_eval_data_must_be_a_jsonl_file(own):
    with pytest.raises(ConfigError, match=r"EvalConfig.data = 'held_out.csv' must be a .jsonl file"):
        EvalConfig(**own, data="held_out.csv")


def test_bad_template_and_grader_files(own, tmp_path):
    with pytest.raises(ConfigError, match=r"has no \{prompt\} slot"):
        build_task(own["task"], "", own["grader"], template="Extract the fields.")
    broken = tmp_path / "broken.toml"
    broken.write_text("[grader\nkind = 'numeric'\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        build_task(own["task"], "", str(broken))
    with pytest.raises(ConfigError, match="unknown grader kind 'numerik'; valid kinds: string"):
        build_task(own["task"], "", {"kind": "numerik"})
    wrong_kind = tmp_path / "wrong_kind.toml"
    wrong_kind.write_text('[grader]\nkind = "numerik"\n')
    with pytest.raises(ConfigError, match=r"wrong_kind.toml: unknown grader kind 'numerik'"):
        build_task(own["task"], "", str(wrong_kind))


def test_an_answer_that_breaks_the_graders_schema_names_its_line(tmp_path):
    data = tmp_path / "inv.jsonl"
    data.write_text('{"prompt": "Invoice A", "answer": {"total": 3.5}}\n'
                    '{"prompt": "Invoice B", "answer": {"total": "three"}}\n')
    grader = {"kind": "json_schema", "schema": {"type": "object", "properties": {"total": {"type": "number"}},
                                                "required": ["total"]}}
    with pytest.raises(ConfigError, match=r"inv.jsonl:2: the answer does not match the grader's schema"):
        build_task(str(data), "", grader)


def test_a_code_task_says_which_sandbox_holds_its_programs(tmp_path):
    from ponder.tasks.spec import sandbox_lines
    data = tmp_path / "code.jsonl"
    data.write_text(json.dumps({"prompt": "def f(x):", "answer": "", "entry_point": "f",
                                "tests": "def check(c):\n    assert c(1) == 1\n"}) + "\n")
    (line,) = sandbox_lines(build_task(str(data), "", {"kind": "code_tests"}, template="Write it.\n{prompt}"))
    assert line.startswith("sandbox: ") and ("bubblewrap" in line)
    unsafe = sandbox_lines(build_task(str(data), "", {"kind": "code_tests", "sandbox": "unsafe-subprocess"}))[0]
    assert unsafe.startswith("sandbox: ") and "unsafe" in unsafe.lower()
    assert sandbox_lines(build_task("arithmetic")) == []


def test_sft_on_gold_uses_a_lines_worked_completion_and_masks_tool_outputs(tmp_path):
    """A line's `completion` (here a calculator call and its output) is what gold SFT trains
    on; the tool's `<output>…</output>` tokens carry no loss, the model's own tokens do."""
    from ponder.stages.sft import collate, encode_trace
    rows = []
    for i in range(8):
        a, b = 10 + i, 20 + i
        rows.append({"id": f"w{i}", "prompt": f"{a}+{b}=?\n", "answer": str(a + b), "split": "train",
                     "completion": f"<think><calc>{a}+{b}</calc><output>{a + b}</output></think>{a + b}"})
    data = tmp_path / "worked.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "g.toml").write_text(GRADER)
    cfg = SFTConfig(task=str(data), grader=str(tmp_path / "g.toml"), gold=8, tools="calculator",
                    out=str(tmp_path / "sft"), epochs=1, batch_size=4, progress=False, threads=1)
    _, tok = load_model("tiny")
    traces = gold_traces(cfg, tok)
    assert sorted(t.completion for t in traces) == sorted(r["completion"] for r in rows)
    prompt, completion, mask = encode_trace(tok, traces[0])
    assert len(mask) == len(completion) and completion[-1] == tok.eos_token_id and mask[-1] == 1
    masked = tok.decode([t for t, m in zip(completion, mask) if m == 0])
    kept = tok.decode([t for t, m in zip(completion, mask) if m == 1][:-1])
    answer = traces[0].completion.split("</think>")[1]
    assert masked == f"<output>{answer}</output>"  # exactly the tool's text
    assert kept == traces[0].completion.replace(masked, "")
    _, _, labels = collate([(prompt, completion, mask)], tok.pad_token_id)
    assert (labels[0] != -100).sum().item() == sum(mask)
    assert (sft(cfg) / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="test.jsonl:1: `completion` must be a string"):
        bad = tmp_path / "test.jsonl"
        bad.write_text(json.dumps({**rows[0], "completion": 5}) + "\n")
        build_task(str(bad), "", str(tmp_path / "g.toml")).examples("train", 1)
