"""SFT: loss on completion tokens only, data order, exact resume at an epoch boundary, bad trace files."""

import json

import pytest
import torch
import torch.nn.functional as F

from run_files import metrics
from ponder.stages import sft as S
from ponder.core.config import ConfigError
from ponder.stages.sft import SFTConfig, TraceFileError, batch_indices, collate, sft, sft_loss
from r1_fixtures import small_model, write_traces


def _cfg(model, data, out, **kw):
    base = dict(model=model, data=str(data), out=str(out), epochs=3, batch_size=4, lr=3e-3, warmup=2,
                save_every=2, seed=0, threads=1, progress=False)
    base.update(kw)
    return SFTConfig(**base)


@pytest.fixture
def setup(tmp_path):
    return small_model(tmp_path / "base"), write_traces(tmp_path / "traces.jsonl", 8)


def test_labels_mark_completion_tokens_only():
    ids, attn, labels = collate([([1, 5, 6], [7, 8, 2]), ([1, 9], [4, 2])], pad_id=0)
    assert ids.tolist() == [[1, 5, 6, 7, 8, 2], [1, 9, 4, 2, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert labels.tolist() == [[-100, -100, -100, 7, 8, 2], [-100, -100, 4, 2, -100, -100]]


def test_loss_is_mean_nll_of_completion_tokens(tiny):
    model, _ = tiny
    ids, attn, labels = collate([([1, 5, 6], [7, 8, 2]), ([1, 9], [4, 2])], pad_id=0)
    logp = F.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
    # Hand-picked targets: row 0 predicts 7, 8, 2 from positions 2, 3, 4; row 1 predicts 4, 2 from 1, 2.
    picks = [(0, 2, 7), (0, 3, 8), (0, 4, 2), (1, 1, 4), (1, 2, 2)]
    expected = -sum(logp[b, t, tok] for b, t, tok in picks) / len(picks)
    assert torch.allclose(sft_loss(model, ids, attn, labels), expected, atol=1e-6)


def test_encode_trace_matches_the_engine(tiny):
    _, tok = tiny
    prompt, completion = S.encode_trace(tok, S.Trace("12+3=?\n", "<think>x</think>15", "f:1"))
    assert prompt == tok("12+3=?\n")["input_ids"] and prompt[0] == tok.bos_token_id
    assert completion[-1] == tok.eos_token_id and tok.decode(completion[:-1]) == "<think>x</think>15"


def test_data_order_is_a_permutation_per_epoch_and_deterministic():
    cfg = SFTConfig(data="x", batch_size=3, seed=5)
    epochs = [[i for s in range(e * 4, e * 4 + 4) for i in batch_indices(10, cfg, s)] for e in range(2)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert batch_indices(10, cfg, 5) == batch_indices(10, cfg, 5)
    assert batch_indices(10, cfg, 3) == [epochs[0][-1]]  # the short last batch of the epoch


def test_loss_falls(setup, tmp_path):
    model, data = setup
    sft(_cfg(model, data, tmp_path / "run", epochs=8, lr=1e-2))
    rows = metrics(tmp_path / "run")
    assert len(rows) == 16 and rows[-1]["loss"] < rows[0]["loss"] * 0.7, (rows[0]["loss"], rows[-1]["loss"])


class _Crash(Exception):
    pass


def test_resume_after_last_step_of_epoch_runs_exactly_the_rest(setup, tmp_path, monkeypatch):
    model, data = setup  # 8 traces, batch 4: 2 steps per epoch, 6 in all
    full = sft(_cfg(model, data, tmp_path / "full"))
    real_save = S.ckpt.save

    def crash_after_epoch_one(root, step, *a, **kw):
        path = real_save(root, step, *a, **kw)
        if step == 2:
            raise _Crash
        return path

    monkeypatch.setattr(S.ckpt, "save", crash_after_epoch_one)
    with pytest.raises(_Crash):
        sft(_cfg(model, data, tmp_path / "part"))
    monkeypatch.setattr(S.ckpt, "save", real_save)
    calls = []
    real_loss = S.sft_loss
    monkeypatch.setattr(S, "sft_loss", lambda *a: calls.append(1) or real_loss(*a))
    part = sft(_cfg(model, data, tmp_path / "part"), resume=True)
    assert len(calls) == 4  # steps 3..6: not zero, not all six
    steps = [m["step"] for m in metrics(tmp_path / "part")]
    assert steps == [1, 2, 3, 4, 5, 6]
    from safetensors.torch import load_file
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_truncated_trace_file_names_file_and_line(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "run"
    sft(_cfg(model, data, out, epochs=1))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    lines = data.read_text().splitlines()
    bad.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # a write killed mid-line
    text = bad.read_bytes()
    with pytest.raises(TraceFileError, match=rf"{bad}:4: not valid JSON"):
        sft(_cfg(model, bad, out, epochs=1))
    from ponder.cli import main
    assert main(["sft", "--data", str(bad), "--out", str(out), "--progress", "false"]) == 1
    assert f"{bad}:4" in capsys.readouterr().err
    assert bad.read_bytes() == text  # the trace file is untouched
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # so is the earlier run


@pytest.mark.parametrize("line, why", [('["a", "b"]', "expected an object"), ('{"prompt": "a"}', "expected an object"),
                                       ('{"prompt": "a", "completion": 3}', "expected an object")])
def test_malformed_rows_name_the_line(tmp_path, line, why):
    p = tmp_path / "t.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n\n' + line + "\n")
    with pytest.raises(TraceFileError, match=rf"{p}:3: {why}"):
        S.read_traces(p)


def test_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        SFTConfig(batch_size=0)
    with pytest.raises(ConfigError, match="unknown TinyModelConfig key.*width.*valid keys: hidden_size"):
        SFTConfig(student="width=64")


def test_fresh_student_and_train_dispatch(setup, tmp_path):
    _, data = setup
    recipe = tmp_path / "sft.toml"
    recipe.write_text(f'kind = "sft"\ndata = "{data}"\nstudent = "hidden_size=16 layers=1 heads=2 mlp_ratio=2"\n'
                      f'out = "{tmp_path / "student"}"\nepochs = 1\nbatch_size = 4\nprogress = false\n')
    from ponder.commands.train import main
    assert main([str(recipe)]) == 0
    cfg = json.loads((tmp_path / "student" / "config.json").read_text())
    assert cfg["init"].startswith("fresh student") and cfg["total_steps"] == 2 and cfg["params"] < 20_000


def test_bf16_precision_trains_and_the_head_sees_completion_positions_only(setup, tmp_path, monkeypatch):
    model_dir, traces = setup
    seen = []
    real = S.body_and_head

    def spy(model):
        body, head = real(model)
        return body, lambda h: (seen.append(h.shape[0]), head(h))[1]

    monkeypatch.setattr(S, "body_and_head", spy)
    ids, attn, labels = collate([([1, 5, 6], [7, 8, 2]), ([1, 9], [4, 2])], pad_id=0)
    from ponder.models.model import load_model
    sft_loss(load_model(model_dir)[0], ids, attn, labels)
    assert seen == [5]  # the LM head ran on the 5 completion positions, not on all 2 x 5
    out = sft(_cfg(model_dir, traces, tmp_path / "run", precision="bf16", epochs=1))
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert out.is_dir() and losses and all(l == l and l < 20 for l in losses)
    with pytest.raises(ConfigError, match="fp16"):
        _cfg(model_dir, traces, tmp_path / "x", precision="fp16")


def test_micro_batches_accumulate_to_the_whole_batch_step(setup, tmp_path):
    """Gradient accumulation over chunks of 1 and 3 rows (batch 4, rows of different lengths)
    trains the same weights as the whole batch at once, up to float rounding."""
    from safetensors.torch import load_file

    model_dir, traces = setup
    weights = {}
    for micro in (0, 1, 3):
        out = sft(_cfg(model_dir, traces, tmp_path / f"m{micro}", epochs=1, micro_batch=micro))
        weights[micro] = load_file(str(out / "model.safetensors"))
    from ponder.models.model import resolve_model_path
    start = load_file(str(resolve_model_path(model_dir) / "model.safetensors"))
    name = next(k for k in weights[0] if not torch.equal(weights[0][k], start[k]))  # training moved it
    for micro in (1, 3):
        for k in weights[0]:
            assert torch.allclose(weights[micro][k], weights[0][k], atol=1e-5, rtol=1e-4), (micro, k)
    assert not torch.allclose(weights[0][name], start[name], atol=1e-5)
    with pytest.raises(ConfigError, match="micro_batch must be >= 0.*-1"):
        _cfg(model_dir, traces, tmp_path / "x", micro_batch=-1)
