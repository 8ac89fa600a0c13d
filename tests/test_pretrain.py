"""Pretraining corpus and packing: honest documents, and packing is exact."""

import pytest
import torch

from ponder.stages.corpus import CorpusMix, documents, solution
from ponder.models.model import TinyModelConfig, new_tiny
from ponder.stages.pretrain import encode_batch, lm_loss, pack_documents, packed_loss
from ponder.tasks import get_task
from ponder.tasks.arithmetic import Problem
from ponder.tasks.base import split_of


def test_every_corpus_answer_is_correct_and_from_the_train_split():
    task = get_task("arithmetic")
    gen = documents(CorpusMix(), seed=0)
    styles = set()
    for _ in range(500):
        doc = next(gen)
        prompt, completion = doc.split("\n", 1)
        problem = prompt[:-2]  # strip "=?"
        assert split_of(problem) == "train"
        op = "add" if "+" in problem else "mul"
        a, b = map(int, problem.replace("*", "+").split("+"))
        from ponder.tasks.base import Example
        ex = Example(id=problem, prompt=prompt + "\n", answer=str(a + b if op == "add" else a * b))
        assert task.verify(completion, ex).ok, doc
        styles.add("direct" if completion.startswith("<think></think>") else
                   "check" if "check:" in completion else "think")
    assert styles == {"direct", "think", "check"}


def test_solution_styles():
    p = Problem("add", 4821, 3957)
    assert solution(p, "direct") == "<think></think>8778"
    assert solution(p, "full", check=True).count("\n") == 5
    with pytest.raises(ValueError, match="valid: direct, partial, full"):
        solution(p, "verbose")


def test_packed_loss_equals_padded_loss():
    model, tok = new_tiny(TinyModelConfig(hidden_size=32, layers=2, heads=2, mlp_ratio=2), seed=0)
    gen = documents(CorpusMix(), seed=1)
    docs = [next(gen) for _ in range(12)]
    packed = pack_documents(tok, docs, row_tokens=128)
    assert packed[0].size(0) < len(docs)  # several documents share a row
    with torch.no_grad():
        a = packed_loss(model, *packed)
        b = lm_loss(model, *encode_batch(tok, docs))
    assert abs(a.item() - b.item()) < 1e-5


def test_pretrain_flags_reach_the_corpus(tmp_path, monkeypatch):
    """`ponder pretrain --p-calc 0.2 --max-digits 7` builds its corpus with those settings (the tool
    base's); the defaults build the shipped base's corpus (p_calc 0: no calculator call in it)."""
    from ponder.stages import pretrain as P

    mixes = []
    real = P.documents
    monkeypatch.setattr(P, "documents", lambda mix, seed: mixes.append(mix) or real(mix, seed))
    tiny = ["--steps", "1", "--batch-size", "4", "--hidden-size", "16", "--layers", "1", "--heads", "2",
            "--warmup", "1"]
    assert P.main([*tiny, "--p-calc", "0.2", "--max-digits", "7", "--out", str(tmp_path / "tools")]) == 0
    assert P.main([*tiny, "--out", str(tmp_path / "plain")]) == 0
    assert (mixes[0].p_calc, mixes[0].max_digits) == (0.2, 7)
    assert (mixes[1].p_calc, mixes[1].max_digits) == (0.0, 5)
    assert (tmp_path / "tools" / "model.safetensors").is_file()


def test_the_saved_command_rebuilds_the_same_config(tmp_path):
    """`ponder_pretrain.json` names the command that made the base: its flags parse back to the config."""
    import json
    import shlex
    from ponder.stages import pretrain as P
    flags = ["--steps", "1", "--batch-size", "4", "--hidden-size", "16", "--layers", "1", "--heads", "2",
             "--warmup", "1", "--p-calc", "0.2", "--max-digits", "7"]
    assert P.main([*flags, "--out", str(tmp_path / "a")]) == 0
    saved = json.loads((tmp_path / "a" / "ponder_pretrain.json").read_text())
    words = shlex.split(saved["command"])
    assert words[:2] == ["ponder", "pretrain"] and "--out" not in words
    assert P.main([*words[2:], "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "ponder_pretrain.json").read_text())
    assert again["config"] == saved["config"] and again["command"] == saved["command"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
