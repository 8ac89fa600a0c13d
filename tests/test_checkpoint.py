"""Checkpoints: durable on disk (fsync order), checked against their marker, and a resume
that falls back past a damaged one instead of dying on it."""

import json
import os

import pytest

from ponder.core import checkpoint as ckpt
from ponder.core.config import ConfigError
from ponder.models.model import TinyModelConfig, new_tiny


@pytest.fixture(scope="module")
def small():
    return new_tiny(TinyModelConfig(hidden_size=32, layers=1, heads=2, mlp_ratio=2), seed=0)


def _two_checkpoints(root, small):
    model, tok = small
    ckpt.save(root, 2, model, tok, {"optimizer": {"which": 2}})
    ckpt.save(root, 4, model, tok, {"optimizer": {"which": 4}})
    return root / "step-000002", root / "step-000004"


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_save_fsyncs_data_and_folder_before_the_marker_and_the_parent_after_the_rename(tmp_path, small,
                                                                                        monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    root = tmp_path / "ck"
    model, tok = small
    ckpt.save(root, 3, model, tok, {"optimizer": {}})
    tmp = str(root / ".tmp-step-000003")
    names = [p.replace(tmp, "TMP") for p in synced]
    marker = names.index("TMP/" + ckpt.MARKER)
    for must in ("TMP/model.safetensors", "TMP/trainer_state.pt", "TMP/config.json", "TMP"):
        assert must in names[:marker], (must, names)
    # after the marker: the folder again (its new entry), then the parent, after the rename
    assert "TMP" in names[marker + 1:] and names[-1] == str(root), names


def test_marker_lists_every_file_with_size_and_hash(tmp_path, small):
    old, new = _two_checkpoints(tmp_path, small)
    listing = json.loads((new / ckpt.MARKER).read_text())
    assert listing["step"] == 4
    assert listing["files"]["model.safetensors"]["size"] == (new / "model.safetensors").stat().st_size
    assert listing["files"]["trainer_state.pt"]["sha256"] == ckpt.sha256_file(new / "trainer_state.pt")
    assert ckpt.damage(new) is None


def test_truncated_weights_fall_back_to_the_previous_checkpoint_in_one_line(tmp_path, small):
    old, new = _two_checkpoints(tmp_path, small)
    _truncate(new / "model.safetensors")
    said = []
    path, state = ckpt.load_latest(tmp_path, ckpt.load_state, say=said.append)
    assert path == old and state["optimizer"] == {"which": 2}
    assert len(said) == 1 and "\n" not in said[0], said
    assert str(new / "model.safetensors") in said[0] and "step-000002" in said[0], said


def test_changed_bytes_of_the_same_size_are_caught_by_the_hash(tmp_path, small):
    old, new = _two_checkpoints(tmp_path, small)
    p = new / "trainer_state.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    assert "trainer_state.pt" in ckpt.damage(new)
    assert ckpt.load_latest(tmp_path, ckpt.load_state, say=lambda s: None)[0] == old


def test_none_loads_fails_in_one_line_naming_the_files(tmp_path, small):
    old, new = _two_checkpoints(tmp_path, small)
    _truncate(new / "model.safetensors")
    (old / "trainer_state.pt").unlink()
    with pytest.raises(ConfigError) as e:
        ckpt.load_latest(tmp_path, ckpt.load_state, say=lambda s: None)
    msg = str(e.value)
    assert "\n" not in msg and str(new / "model.safetensors") in msg and str(old / "trainer_state.pt") in msg


def test_no_checkpoint_at_all_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        ckpt.load_latest(tmp_path / "nothing", ckpt.load_state)


def test_a_loader_that_raises_falls_back_too(tmp_path, small):
    """Old checkpoints (a marker holding only the step) cannot be checked; their loader's error is the signal."""
    old, new = _two_checkpoints(tmp_path, small)
    for p in (old, new):
        (p / ckpt.MARKER).write_text(p.name[-1])

    def loader(path):
        if path == new:
            raise RuntimeError("Error while deserializing header: incomplete metadata\nsecond line")
        return "ok"

    said = []
    assert ckpt.load_latest(tmp_path, loader, say=said.append) == (old, "ok")
    assert len(said) == 1 and "RuntimeError: Error while deserializing header" in said[0]
    assert "second line" not in said[0]


def test_a_config_error_from_the_loader_is_not_taken_for_damage(tmp_path, small):
    _two_checkpoints(tmp_path, small)
    tried = []

    def loader(path):
        tried.append(path.name)
        raise ConfigError("the trace files changed")

    with pytest.raises(ConfigError, match="the trace files changed"):
        ckpt.load_latest(tmp_path, loader, say=lambda s: None)
    assert tried == ["step-000004"]


# -- resume in the real loops: `ponder train --resume` and `ponder sft --resume` ---------------------
def _rl_cfg(model, out, **kw):
    from ponder.rl.train import RLConfig
    base = dict(model=model, task="digits", out=str(out), steps=4, prompts_per_step=2, group_size=4,
                max_new_tokens=6, lr=3e-3, warmup=1, save_every=2, seed=0, track_kl=False, tensorboard=False,
                progress=False)
    base.update(kw)
    return RLConfig(**base)


def _same_weights(a_dir, b_dir):
    from safetensors.torch import load_file
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    return a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


@pytest.fixture
def rl_setup(tmp_path, monkeypatch):
    from ponder.tasks import TASKS
    from r1_fixtures import DigitsTask, small_model
    monkeypatch.setitem(TASKS, "digits", DigitsTask)
    return small_model(tmp_path / "base")


def test_train_resume_falls_back_past_truncated_weights_and_ends_like_an_uninterrupted_run(rl_setup, tmp_path,
                                                                                          capsys):
    from ponder.rl.train import train
    train(_rl_cfg(rl_setup, tmp_path / "full", steps=6))
    part = tmp_path / "part"
    train(_rl_cfg(rl_setup, part, steps=4))  # complete checkpoints step-2 and step-4
    _truncate(part / "checkpoints" / "step-000004" / "model.safetensors")
    capsys.readouterr()
    train(_rl_cfg(rl_setup, part, steps=6), resume=True)
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if "damaged" in line]
    assert len(bad) == 1 and str(part / "checkpoints" / "step-000004" / "model.safetensors") in bad[0], out
    assert "falling back to step-000002" in bad[0] and "resuming from step-000002" in out, out
    assert _same_weights(tmp_path / "full" / "model", part / "model")  # steps 3-4 redone exactly


def test_train_resume_with_no_loadable_checkpoint_fails_in_one_line(rl_setup, tmp_path, capsys):
    from ponder.cli import main as cli
    from ponder.rl.train import train
    part = tmp_path / "part"
    train(_rl_cfg(rl_setup, part, steps=4))
    for step in ("step-000002", "step-000004"):
        _truncate(part / "checkpoints" / step / "model.safetensors")
    capsys.readouterr()
    rc = cli(["train", "--resume", "--out", str(part), "--model", rl_setup, "--task", "digits", "--steps", "6",
              "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6", "--lr", "3e-3",
              "--warmup", "1", "--save-every", "2", "--track-kl", "false", "--tensorboard", "false",
              "--progress", "false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    assert all(str(part / "checkpoints" / s / "model.safetensors") in err for s in ("step-000002", "step-000004"))


def test_sft_resume_falls_back_past_a_truncated_checkpoint(tmp_path, capsys):
    import shutil

    from ponder.stages.sft import SFTConfig, sft
    from r1_fixtures import small_model, write_traces
    model, data = small_model(tmp_path / "base"), write_traces(tmp_path / "traces.jsonl", 8)
    cfg = SFTConfig(model=model, data=str(data), out=str(tmp_path / "run"), epochs=2, batch_size=2, lr=3e-3,
                    warmup=1, save_every=2, threads=1, progress=False)
    sft(cfg)  # 8 steps; checkpoints step-6 and step-8 are kept
    shutil.copytree(tmp_path / "run" / "model", tmp_path / "first")
    _truncate(tmp_path / "run" / "checkpoints" / "step-000008" / "model.safetensors")
    capsys.readouterr()
    sft(cfg, resume=True)
    out = capsys.readouterr().out
    assert "step-000008/model.safetensors" in out and "falling back to step-000006" in out, out
    assert "resuming from step-000006" in out
    assert _same_weights(tmp_path / "first", tmp_path / "run" / "model")


def test_a_checkpoint_that_cannot_be_written_says_so_and_keeps_the_older_ones(tmp_path, small, monkeypatch):
    """A full disk mid-write (torch's zip writer raises a RuntimeError): one message naming the
    step, the folder and the free space; no half-written folder left; the older checkpoint intact."""
    model, tok = small
    ckpt.save(tmp_path, 2, model, tok, {"optimizer": {"which": 2}})

    def full(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 516888640 vs 516888532")
    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint step 4 could not be written under .*MB free "
                                                        r"there\. The newest complete checkpoint \(step-000002\)"):
        ckpt.save(tmp_path, 4, model, tok, {"optimizer": {"which": 4}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]
    assert ckpt.latest(tmp_path).name == "step-000002" and ckpt.damage(ckpt.latest(tmp_path)) is None
