"""Difficulty-aware sampling (MiMo): the pass history, the preference, and the run's determinism."""

from collections import Counter
from dataclasses import replace

import pytest
import torch

from run_files import metrics as _rows
from ponder.core import checkpoint as ckpt
from ponder.core.verdict import Verdict
from ponder.rl.rollout import Group
from ponder.rl.sampling import FLOOR, PassHistory, choose, informative_score, is_informative, record
from ponder.rl.train import RLConfig, step_examples, train
from ponder.tasks.arithmetic import ArithmeticTask
from ponder.tasks.base import Example

from test_train import _cfg, small_model  # noqa: F401 (fixture)

OK, NO, BAD = Verdict(1.0, "correct"), Verdict(0.0, "wrong"), Verdict(0.0, "invalid")


def _group(example, *verdicts):
    return Group(example, (None,) * len(verdicts), verdicts, tuple(v.score for v in verdicts))


def _ex(i, difficulty=1):
    return Example(id=f"q{i}", prompt=f"{i}?", answer="1", difficulty=difficulty)


def test_informative_means_pass_rate_strictly_between_0_and_1():
    assert is_informative(_group(_ex(0), OK, NO))
    assert not is_informative(_group(_ex(0), OK, OK)) and not is_informative(_group(_ex(0), NO, NO))
    assert not is_informative(_group(_ex(0), OK, OK, BAD))  # an invalid verdict is no failure


def test_history_keeps_the_recent_window_per_prompt_and_level():
    h = record(PassHistory(window=2), [_group(_ex(0), OK, NO), _group(_ex(0), OK, OK), _group(_ex(1, 3), OK, OK)])
    h = record(h, [_group(_ex(0), NO, NO)])
    assert h.records == {"id=q0": (0, 0), "difficulty=1": (0, 0), "id=q1": (0,), "difficulty=3": (0,)}
    h = record(h, [_group(_ex(2), OK, NO)])
    assert informative_score(h, _ex(0)) == 0.0  # its own record first
    assert informative_score(h, _ex(9)) == 0.5  # unseen: its level's record (q2 informative, q0 not)
    assert informative_score(h, _ex(9, difficulty=5)) == 1.0  # nothing known: worth a try


def test_choose_prefers_informative_prompts_but_reaches_the_rest():
    solved, open_ = [_ex(i) for i in range(8)], [_ex(i) for i in range(8, 16)]
    h = record(PassHistory(), [_group(e, OK, OK) for e in solved] + [_group(e, OK, NO) for e in open_])
    counts = Counter()
    for s in range(200):
        counts.update(e.id in {x.id for x in open_} for e in choose(solved + open_, h, 4, torch.Generator().manual_seed(s)))
    # weights 1.0 vs FLOOR = 0.1: about 9 in 10 picks are informative, and solved prompts still come up
    assert counts[True] / 800 > 0.85 and counts[False] > 0, counts
    a = choose(solved + open_, h, 4, torch.Generator().manual_seed(3))
    assert a == choose(solved + open_, h, 4, torch.Generator().manual_seed(3))  # same seed, same prompts
    assert len({e.id for e in a}) == 4  # without replacement
    assert FLOOR > 0


def test_step_examples_off_by_default_and_deterministic_when_on():
    task = ArithmeticTask(min_digits=1, max_digits=3)
    cfg = RLConfig(task="arithmetic", prompts_per_step=8)
    assert not cfg.difficulty_sampling
    assert step_examples(task, cfg, 5, 0) == task.examples("train", 8, seed=cfg.seed * 1_000_003 + 5 * 101)
    on = replace(cfg, difficulty_sampling=True, difficulty_pool=4)
    easy = [e for e in task.examples("train", 32, seed=on.seed * 1_000_003 + 5 * 101) if e.difficulty == 1]
    h = record(PassHistory(), [_group(e, OK, OK) for e in easy[:1]])  # level 1 solved
    a, b = step_examples(task, on, 5, 0, h), step_examples(task, on, 5, 0, h)
    assert a == b and len(a) == 8
    assert step_examples(task, on, 6, 0, h) != a  # another step, other prompts
    with pytest.raises(ValueError, match="difficulty_pool"):
        replace(cfg, difficulty_pool=0)


def test_difficulty_sampling_run_is_logged_deterministic_and_resumes_exactly(small_model, tmp_path):
    kw = dict(steps=6, save_every=3, difficulty_sampling=True, difficulty_pool=3)
    a, b, part = tmp_path / "a", tmp_path / "b", tmp_path / "part"
    train(_cfg(small_model, a, **kw))
    train(_cfg(small_model, b, **kw))
    train(_cfg(small_model, part, **{**kw, "steps": 3}))
    train(_cfg(small_model, part, **kw), resume=True)
    ra, rb, rp = _rows(a), _rows(b), _rows(part)
    assert all(0.0 <= r["informative_frac"] <= 1.0 for r in ra)
    for other in (rb, rp):
        assert [r["informative_frac"] for r in other] == [r["informative_frac"] for r in ra]
        assert [r["reward"] for r in other] == pytest.approx([r["reward"] for r in ra], abs=1e-9)
    assert ckpt.load_state(ckpt.latest(part / "checkpoints"))["pass_history"]
