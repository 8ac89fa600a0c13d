"""Recipes and flags: unknown keys and bad values fail at once, naming the valid ones."""

import pytest

from ponder.core import config as C
from ponder.cli import main as cli_main
from ponder.rl.train import RLConfig


def test_unknown_key_lists_valid_keys():
    with pytest.raises(C.ConfigError, match=r"unknown RLConfig key\(s\): stpes; valid keys: task, task_options, grader, .*model"):
        C.build(RLConfig, {"stpes": 3})


def test_bad_choice_lists_choices():
    with pytest.raises(C.ConfigError, match="choose one of: grpo, rloo"):
        C.build(RLConfig, {"advantage": "ppo"})


def test_wrong_type_names_field():
    with pytest.raises(C.ConfigError, match="RLConfig.steps expects int"):
        C.build(RLConfig, {"steps": "many"})


def test_toml_then_cli_override(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\nsteps = 7\nlr = 0.01\nscale_rewards = false\n')
    import argparse
    ap = argparse.ArgumentParser()
    C.add_arguments(ap, RLConfig)
    cfg = C.from_args(RLConfig, ap.parse_args(["--lr", "0.02"]), str(recipe), section="train")
    assert (cfg.steps, cfg.lr, cfg.scale_rewards) == (7, 0.02, False)


def test_invalid_combination_explains_why():
    with pytest.raises(C.ConfigError, match="group_size must be >= 2"):
        RLConfig(group_size=1)


def test_cli_unknown_verb_and_help(capsys):
    assert cli_main(["frobnicate"]) == 2
    assert "valid verbs: quickstart" in capsys.readouterr().err
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("quickstart", "pretrain", "train", "eval", "report"):
        assert verb in out


def test_cli_bad_value_is_a_clean_error(capsys, tmp_path):
    assert cli_main(["train", "--advantage", "nope", "--out", str(tmp_path)]) == 2
    assert "choose one of: grpo, rloo" in capsys.readouterr().err


def test_a_missing_optional_package_names_the_extra(monkeypatch, capsys):
    import importlib

    import ponder.cli as cli
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "ponder.serve.app":
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        return real(name, *a, **k)

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    assert cli_main(["serve", "tiny"]) == 2
    assert "pip install 'ponder[serve]'" in capsys.readouterr().err


def test_a_single_verb_reads_a_pipeline_recipes_task_and_shared_settings(tmp_path):
    """`ponder eval RECIPE --data FILE` on a pipeline recipe: the [task] table (grader found beside
    the recipe) and the [pipeline] settings the verb has; the stages are not its business."""
    from ponder.inference.evaluate import EvalConfig
    from ponder.stages.sft import SFTConfig

    (tmp_path / "g.toml").write_text('[grader]\nkind = "string"\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text('[task]\ndata = "@data"\ngrader = "g.toml"\ntemplate = "Q: {prompt}"\n'
                      '[pipeline]\nmax_new_tokens = 77\nthreads = 1\neval_problems = 9\n'
                      '[[stage]]\nname = "data"\nkind = "data"\n[[stage]]\nname = "e"\nkind = "eval"\n')
    ev = C.build(EvalConfig, C.load_toml(recipe, "eval", known=EvalConfig.__dataclass_fields__))
    assert (ev.max_new_tokens, ev.threads, ev.template) == (77, 1, "Q: {prompt}")
    assert ev.grader == str(tmp_path / "g.toml")
    assert ev.samples == 1  # greedy, as the pipeline's evals are (EvalConfig alone samples 8)
    assert EvalConfig().samples > 1
    recipe.write_text(recipe.read_text().replace("eval_problems = 9", "eval_samples = 3"))
    assert C.build(EvalConfig, C.load_toml(recipe, "eval", known=EvalConfig.__dataclass_fields__)).samples == 3
    sft = C.load_toml(recipe, "sft", known=SFTConfig.__dataclass_fields__)
    assert "max_new_tokens" not in sft and "stage" not in sft and sft["threads"] == 1
    with pytest.raises(C.ConfigError, match="@data.*pipeline.*--data FILE.jsonl"):
        from ponder.tasks.spec import build_task
        build_task("@data", "", str(tmp_path / "g.toml"))
