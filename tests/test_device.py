"""`--device auto|cpu|cuda`: one field on every verb, resolved in one place, and a run follows it."""

from __future__ import annotations

import json

import pytest
import torch
from run_files import metrics

from ponder import cli
from ponder.core.config import ConfigError
from ponder.core.device import move, of, resolve

HAS_GPU = torch.cuda.is_available()


def test_auto_is_a_gpu_when_torch_sees_one_else_the_cpu():
    assert resolve("auto") == torch.device("cuda" if HAS_GPU else "cpu")
    assert resolve("cpu") == torch.device("cpu")


def test_an_unknown_device_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"device 'gpu' is not valid; choose one of: auto, cpu, cuda"):
        resolve("gpu")


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_clearly():
    with pytest.raises(ConfigError, match=r"torch sees no GPU.*--device cpu or auto"):
        resolve("cuda")


def config_classes():
    from ponder.commands.quickstart import QuickstartConfig
    from ponder.inference.evaluate import EvalConfig
    from ponder.inference.overthinking import OverthinkConfig
    from ponder.inference.prm import PRMConfig
    from ponder.inference.scale import ScaleConfig
    from ponder.rl.train import RLConfig
    from ponder.serve.service import ServeConfig
    from ponder.stages.collect import CollectConfig
    from ponder.stages.pipeline import PipelineConfig
    from ponder.stages.pretrain import PretrainConfig
    from ponder.stages.sft import SFTConfig
    return [QuickstartConfig, EvalConfig, OverthinkConfig, PRMConfig, ScaleConfig, RLConfig, ServeConfig,
            CollectConfig, PipelineConfig, PretrainConfig, SFTConfig]


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_verb_that_loads_a_model_has_a_device_field(cls):
    assert cls().device == "auto"
    assert cls(device="cpu").device == "cpu"


@pytest.mark.parametrize("verb", ["train", "eval", "sft", "collect", "scale", "train-prm", "overthink",
                                  "pretrain", "serve", "quickstart"])
def test_a_bad_device_flag_is_refused_before_any_work(verb, capsys, tmp_path):
    argv = [verb, "--device", "tpu"]
    if verb == "sft":
        argv += ["--data", str(tmp_path / "none.jsonl")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "'tpu'" in err and "auto, cpu, cuda" in err, err


def test_move_puts_every_tensor_field_on_the_device():
    from ponder.rl.train import RLBatch
    b = RLBatch(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), torch.ones(2, 2), torch.zeros(2))
    moved = move(b, torch.device("cpu"))
    assert moved.ids.device.type == "cpu" and moved.rewards is None


def _tiny_run(tmp_path, device: str, name: str):
    from ponder.rl.train import RLConfig, train
    cfg = RLConfig(model="tiny", task="arithmetic", task_options="min_digits=1 max_digits=2 ops=add",
                   out=str(tmp_path / name), steps=1, prompts_per_step=2, group_size=2, max_new_tokens=12,
                   progress=False, tensorboard=False, threads=1, device=device)
    train(cfg)
    return cfg


def test_a_tiny_train_step_runs_on_the_cpu_when_asked(tmp_path):
    cfg = _tiny_run(tmp_path, "cpu", "cpu")
    assert json.loads((tmp_path / "cpu" / "config.json").read_text())["device"] == "cpu"
    line = metrics(tmp_path / "cpu")[-1]
    assert line["step"] == 1 and "loss" in line, line
    from ponder.models.model import load_model
    model, _ = load_model(tmp_path / "cpu" / "model", device=cfg.device)
    assert of(model) == torch.device("cpu")


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
def test_the_same_step_runs_on_a_gpu(tmp_path):  # runs where torch sees a GPU (not on this project's CI)
    _tiny_run(tmp_path, "cuda", "cuda")
    line = metrics(tmp_path / "cuda")[-1]
    assert line["step"] == 1 and line["loss"] == line["loss"], line  # finite, not NaN
