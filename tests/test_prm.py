"""PRM: step cutting, Math-Shepherd labels, a head that learns, save/load."""

import pytest
import torch

from ponder.core.config import ConfigError
from ponder.engine.engine import Engine
from ponder.inference.prm import PRM, PRMConfig, ValueHead, fit_head, label_steps, pairwise_accuracy, step_ends, train_prm
from ponder.tasks import get_task
from r1_fixtures import small_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return small_model(tmp_path_factory.mktemp("model") / "m")


def test_step_ends_cut_thinking_lines_close_and_end():
    NL, CLOSE, EOS = 9, 4, 2
    assert step_ends([5, NL, 5, NL, CLOSE, 7, 7, EOS], NL, CLOSE, EOS) == [2, 4, 5, 7]
    assert step_ends([CLOSE, 7], NL, CLOSE, EOS) == [1, 2]
    assert step_ends([5, 5, 5], NL, CLOSE, EOS) == [3]  # truncated inside the thinking: one step
    assert step_ends([7, NL, 7], NL, None, EOS) == [2, 3]  # no think tokens: lines are still steps
    assert step_ends([EOS], NL, CLOSE, EOS) == []


def test_labels_are_fractions_and_finals_are_verdicts(tiny):
    model, tok = tiny
    task = get_task("arithmetic", min_digits=1, max_digits=2)
    cfg = PRMConfig(problems=3, rollouts=2, continuations=3, max_new_tokens=24, chunk=4)
    examples = task.examples("train", 3)
    rows = label_steps(Engine(model, tok), task, examples, cfg)
    assert rows
    for r in rows:
        assert r["prompt"] == tok(examples[r["problem"]].prompt)["input_ids"] and r["ids"]
        assert 0.0 <= r["label"] <= 1.0
        if r["final"]:
            assert r["label"] in (0.0, 1.0)
        else:
            assert r["label"] * (1 + cfg.continuations) == pytest.approx(round(r["label"] * (1 + cfg.continuations)))


def test_head_learns_a_separable_signal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).float()
    head, epochs = fit_head(x[:300], y[:300], PRMConfig(epochs=300), val=(x[300:], y[300:]))
    with torch.no_grad():
        p = torch.sigmoid(head(x[300:]))
    assert pairwise_accuracy(p.tolist(), y[300:].tolist()) > 0.95
    assert 1 <= epochs <= 300


def test_train_save_load_and_score(tiny_folder, tmp_path):
    out = tmp_path / "prm"
    meta = train_prm(PRMConfig(model=str(tiny_folder), task_options="max_digits=2", out=str(out), problems=6,
                               rollouts=2, continuations=2, max_new_tokens=20, epochs=20))
    assert meta["metrics"]["step_prefixes"] > 0
    from ponder.models.model import load_model
    model, tok = load_model(tiny_folder)
    prm = PRM.load(out, model, tok)
    prompt = tok("1+2=?\n")["input_ids"]
    scores = prm.score([prompt, prompt], [[], tok("<think></think>3", add_special_tokens=False)["input_ids"]])
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)
    with pytest.raises(ConfigError, match="no PRM"):
        PRM.load(tmp_path, model, tok)


def test_value_head_shapes():
    h = ValueHead(6, 4)
    assert h(torch.zeros(3, 6)).shape == (3,)
