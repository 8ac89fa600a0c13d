"""`ponder pipeline` on a toy 3-stage recipe: manifests, skipping, --from, resume, lineage, summary."""

import json

import pytest

from ponder.cli import main as cli
from ponder.core.config import ConfigError
from ponder.stages.pipeline import lineage, run_pipeline
from ponder.tasks import TASKS
from r1_fixtures import AnyTask, small_model

RECIPE = """
[pipeline]
task = "any"
eval_problems = 3
max_new_tokens = 6
threads = 1
progress = false

[[stage]]
name = "rl"
kind = "rl"
model = "{model}"
steps = 2
prompts_per_step = 2
group_size = 2
save_every = 1
track_kl = false
tensorboard = false

[[stage]]
name = "collect"
kind = "collect"
model = "@rl"
prompts = 4
k = 2
readable = false

[[stage]]
name = "sft"
kind = "sft"
model = "@rl"
data = "@collect"
epochs = {epochs}
batch_size = 4
save_every = 1
"""


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "any", AnyTask)
    model = small_model(tmp_path / "base")

    def write(epochs=1, text=RECIPE):
        p = tmp_path / "r.toml"
        p.write_text(text.format(model=model, epochs=epochs))
        return p
    return write


def _mtimes(out):
    return {s: (out / s / "manifest.json").stat().st_mtime_ns for s in ("rl", "collect", "sft")}


def test_run_skip_from_and_config_change(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_pipeline(recipe(), out) == {"rl": "ran", "collect": "ran", "sft": "ran"}
    m = json.loads((out / "sft" / "manifest.json").read_text())
    assert m["inputs"]["parent"]["model"] == str(out / "rl" / "model")
    assert m["inputs"]["parent"]["sha256"] == json.loads((out / "rl" / "manifest.json").read_text())["outputs"][0]["sha256"]
    assert m["inputs"]["data"][0]["path"] == str(out / "collect" / "traces.jsonl")
    assert len(m["inputs"]["data"][0]["sha256"]) == 64 and m["config"]["epochs"] == 1
    assert m["held_out"]["summary"]["accuracy"] == 1.0 and m["metrics"]["step"] == 2 and "git_commit" in m
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["rl", "collect", "sft"]
    assert summary["teacher"]["stage"] == "rl" and summary["teacher"]["params"] > 0
    assert summary["stages"][0]["mean_thinking_tokens"] is not None

    before = _mtimes(out)
    assert run_pipeline(recipe(), out) == {"rl": "skipped", "collect": "skipped", "sft": "skipped"}
    assert _mtimes(out) == before

    assert cli(["pipeline", str(recipe()), "--out", str(out), "--from", "collect"]) == 0
    after = _mtimes(out)
    assert after["rl"] == before["rl"] and after["collect"] > before["collect"] and after["sft"] > before["sft"]

    # a changed stage reruns; stages before it are untouched
    assert run_pipeline(recipe(epochs=2), out) == {"rl": "skipped", "collect": "skipped", "sft": "ran"}
    assert json.loads((out / "sft" / "manifest.json").read_text())["metrics"]["step"] == 4

    # an output edited behind the pipeline's back is remade; the same bytes come out, so sft stays finished
    with (out / "collect" / "traces.jsonl").open("a") as f:
        f.write('{"prompt": "1+1=?", "completion": "<think></think>3"}\n')
    assert run_pipeline(recipe(epochs=2), out) == {"rl": "skipped", "collect": "ran", "sft": "skipped"}

    assert cli(["lineage", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sft (sft) <- model rl [" in text and f"data {out / 'collect' / 'traces.jsonl'} [" in text
    assert "collect (collect) <- model rl" in text and "kept 8 traces of 8 samples" in text


def test_unfinished_stage_resumes_from_its_checkpoint(recipe, tmp_path):
    out = tmp_path / "run"
    run_pipeline(recipe(epochs=2), out)
    weights = (out / "sft" / "model" / "model.safetensors").read_bytes()
    # as if killed after the sft stage's step-3 checkpoint: no manifest, no model, no step-4
    import shutil
    (out / "sft" / "manifest.json").unlink()
    shutil.rmtree(out / "sft" / "model")
    shutil.rmtree(out / "sft" / "checkpoints" / "step-000004")
    assert "sft: not finished (resumable from step-000003)" in lineage(out)
    assert run_pipeline(recipe(epochs=2), out)["sft"] == "ran"
    assert json.loads((out / "sft" / "manifest.json").read_text())["resumed"] is True
    assert (out / "sft" / "model" / "model.safetensors").read_bytes() == weights
    # unfinished, but started from other inputs (its parent was remade since): start over, not resume
    (out / "sft" / "manifest.json").unlink()
    (out / "sft" / "inputs.json").write_text(json.dumps({"parent": None, "data": []}))
    assert run_pipeline(recipe(epochs=2), out)["sft"] == "ran"
    assert json.loads((out / "sft" / "manifest.json").read_text())["resumed"] is False
    assert (out / "sft" / "model" / "model.safetensors").read_bytes() == weights


def test_recipe_errors_name_the_problem(recipe, tmp_path):
    with pytest.raises(ConfigError, match="--from 'nope' is not a stage .* valid: rl, collect, sft"):
        run_pipeline(recipe(), tmp_path / "o", from_stage="nope")
    bad = RECIPE.replace('data = "@collect"', 'data = "@rl"')
    with pytest.raises(ConfigError, match="stage 'sft' \\(sft\\): data '@rl' must name an earlier collect stage; valid: @collect"):
        run_pipeline(recipe(text=bad), tmp_path / "o")
    bad = RECIPE.replace('kind = "collect"', 'kind = "gather"')
    with pytest.raises(ConfigError, match="kind 'gather' is not valid; choose one of: rl, collect, sft, distill, pretrain, eval"):
        run_pipeline(recipe(text=bad), tmp_path / "o")
    bad = RECIPE.replace("prompts = 4", "prompt = 4")
    with pytest.raises(ConfigError, match="stage 'collect' \\(collect\\): unknown CollectConfig key\\(s\\): prompt"):
        run_pipeline(recipe(text=bad), tmp_path / "o")


DISTILL = """
[pipeline]
task = "any"
eval_problems = 3
max_new_tokens = 6
threads = 1
progress = false
teacher = "teacher"

[[stage]]
name = "teacher"
kind = "eval"
model = "{model}"

[[stage]]
name = "traces"
kind = "collect"
model = "@teacher"
prompts = 4
k = 2
readable = false
keep = "shortest"

[[stage]]
name = "small_base"
kind = "pretrain"
steps = 2
batch_size = 2
hidden_size = 16
layers = 1
heads = 2

[[stage]]
name = "fresh"
kind = "distill"
student = "hidden_size=16 layers=1 heads=2 mlp_ratio=2"
data = "@traces"
epochs = 1

[[stage]]
name = "student"
kind = "distill"
model = "@small_base"
data = "@traces"
epochs = 1
"""


def test_distill_from_fresh_and_pretrained_students(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert set(run_pipeline(recipe(text=DISTILL), out).values()) == {"ran"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == {"stage": "teacher", "params": 13_568, "accuracy": 1.0}
    assert summary["student"]["stage"] == "student" and summary["student_param_ratio"] < 0.5
    assert summary["student_accuracy_retention"] == 1.0  # "any" accepts every answer: see the test below
    text = lineage(out)
    assert "fresh (distill) <- fresh student (hidden_size=16" in text
    assert "student (distill) <- model small_base [" in text
    bad = DISTILL.replace('student = "hidden_size=16 layers=1 heads=2 mlp_ratio=2"\n', "")
    with pytest.raises(ConfigError, match="stage 'fresh' \\(distill\\): a distill stage needs its student"):
        run_pipeline(recipe(text=bad), tmp_path / "o")


def test_an_option_added_after_a_stage_ran_keeps_it_finished_only_at_its_default():
    from dataclasses import asdict

    from ponder.stages.pipeline import same_config
    from ponder.rl.train import RLConfig
    old = {k: v for k, v in asdict(RLConfig(steps=7)).items() if k != "length_weight"}  # written by an older ponder
    assert same_config(old, RLConfig(steps=7))
    assert not same_config(old, RLConfig(steps=7, length_weight=0.1))  # the new option is in use: rerun
    assert not same_config(old, RLConfig(steps=8))
    assert not same_config({**old, "gone": 1}, RLConfig(steps=7))  # an option ponder no longer has


CHECKED_DISTILL = """
[pipeline]
task = "arithmetic"
task_options = "max_digits=2 ops=add"
eval_problems = 20
max_new_tokens = 24
threads = 1
progress = false
teacher = "teacher"

[[stage]]
name = "teacher"
kind = "eval"
model = "tiny"

[[stage]]
name = "traces"
kind = "collect"
model = "@teacher"
prompts = 8
k = 2
readable = false

[[stage]]
name = "fresh"
kind = "distill"
student = "hidden_size=16 layers=1 heads=2 mlp_ratio=2"
data = "@traces"
epochs = 1
"""


def test_distill_retention_is_measured_by_a_verifier_that_checks(tmp_path):
    """The built-in base adds 1-2-digit numbers; a fresh student after one epoch on a few traces mostly
    cannot. Retention is the ratio of the two held-out accuracies the verifier measured."""
    out = tmp_path / "run"
    recipe = tmp_path / "checked.toml"
    recipe.write_text(CHECKED_DISTILL)
    run_pipeline(recipe, out)
    acc = {}
    for stage in ("teacher", "fresh"):
        rows = json.loads((out / stage / "eval.json").read_text())["samples"]
        assert len(rows) == 20 and {r["status"] for r in rows} <= {"correct", "wrong", "invalid"}
        acc[stage] = sum(r["correct"] for r in rows) / len(rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] == acc["teacher"] >= 0.5
    assert summary["student"]["accuracy"] == acc["fresh"] < acc["teacher"]
    assert summary["student_accuracy_retention"] == pytest.approx(acc["fresh"] / acc["teacher"])
    assert summary["student_accuracy_retention"] < 1.0


def test_a_stages_held_out_eval_calls_the_tools_it_trained_with(tmp_path, monkeypatch):
    """An RL stage trained with --tools: its held-out evaluation runs the same tools; a stage
    without tools is evaluated without them."""
    from ponder.inference.evaluate import EvalConfig
    from ponder.rl.train import RLConfig
    from ponder.stages import pipeline as P

    seen = []
    monkeypatch.setattr(P, "load_model", lambda path, device="auto": (_Params(), None))
    monkeypatch.setattr(P, "make_task", lambda cfg: None)
    monkeypatch.setattr(P, "evaluate", lambda model, tok, task, cfg: seen.append(cfg) or {"summary": {}})
    monkeypatch.setattr(P, "count_params", lambda model: 0)
    pc = P.PipelineConfig(task="arithmetic", eval_problems=2)
    for tools in ("calculator", ""):
        cfg = RLConfig(task="arithmetic", tools=tools, max_tool_calls=2, out=str(tmp_path / "rl"))
        P._held_out(P.Stage("rl", "rl", cfg, "tiny", ()), pc, "tiny", tmp_path)
    assert isinstance(seen[0], EvalConfig) and (seen[0].tools, seen[0].max_tool_calls) == ("calculator", 2)
    assert (seen[1].tools, seen[1].max_tool_calls) == ("", 2)


class _Params:
    pass
