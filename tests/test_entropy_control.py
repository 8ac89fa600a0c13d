"""Adaptive entropy control (Skywork-OR1): the coefficient's rule, its gate, a simulated run, a real one."""

import math
import random
import statistics

import pytest

from run_files import metrics as _rows
from ponder.core import checkpoint as ckpt
from ponder.rl.ppo import entropy_bonus_weight, entropy_coef_update
from ponder.rl.train import train

from test_train import _cfg, small_model  # noqa: F401 (fixture)

TARGET = 0.05


def test_coefficient_rises_below_falls_above_and_is_clipped():
    c, seen = 0.0, []
    for e in (0.01, 0.01, 0.01, 0.01, 0.09, 0.09, 0.09, 0.09, 0.09, 0.09):
        c = entropy_coef_update(c, e, TARGET, step=0.01, max_coef=0.025)
        seen.append(c)
    assert seen == pytest.approx([0.01, 0.02, 0.025, 0.025, 0.015, 0.005, 0, 0, 0, 0])
    assert entropy_coef_update(0.02, TARGET, TARGET, 0.01, 0.1) == pytest.approx(0.01)  # at the target counts as above


def test_bonus_applies_only_below_the_target():
    assert entropy_bonus_weight(0.02, 0.049, TARGET) == 0.02
    assert entropy_bonus_weight(0.02, TARGET, TARGET) == 0.0  # at or above: no bonus, the coefficient is kept
    assert entropy_bonus_weight(0.02, None, TARGET) == 0.0  # before the first step


def simulate(bonus, steps=300, sharpen=0.05, noise=0.05, seed=0, aim=TARGET, settle=100):
    """A run's entropy under RL sharpening: the log-sharpness x grows by `sharpen` per step
    (plus noise) and an applied bonus w pulls it back by w; entropy = 0.16 * exp(-x)
    (the quickstart starts at 0.16 nats). The bonus acts on the *parameters*, so its effect
    accumulates: the plant integrates, which is what makes an ungated controller overshoot."""
    rng = random.Random(seed)
    x, coef, seen, out = 0.0, 0.0, None, []
    for _ in range(steps):
        x += sharpen - bonus(coef, seen) + noise * rng.gauss(0, 1)
        e = 0.16 * math.exp(-x)
        out.append(e)
        coef, seen = entropy_coef_update(coef, e, aim, step=0.005, max_coef=0.3), e
    return out[settle:]  # by default after the controller has found its level


def test_simulated_collapse_is_held_at_the_target():
    off = simulate(lambda c, e: 0.0)
    assert max(off) < 0.1 * TARGET  # without control entropy collapses
    for seed in range(5):
        held = simulate(lambda c, e: entropy_bonus_weight(c, e, TARGET), seed=seed)
        assert statistics.median(held) >= 0.98 * TARGET, seed  # it sits at the target...
        assert min(held) >= 0.7 * TARGET, (seed, min(held))  # ...never far below (a noisy step or two)...
        assert max(held) <= 1.3 * TARGET, (seed, max(held))  # ...and never blown up (the gate stops wind-up)


def test_a_margin_keeps_entropy_above_the_target_as_a_floor():
    """Aimed at the target itself, the controller's swings dip below it; aimed 40% above
    (`entropy_margin = 0.4`, the aim `RLConfig.entropy_aim`) they stay above it."""
    from ponder.rl.train import RLConfig
    aim = RLConfig(entropy_target=TARGET, entropy_margin=0.4).entropy_aim
    assert aim == pytest.approx(1.4 * TARGET)
    at = [min(simulate(lambda c, e: entropy_bonus_weight(c, e, TARGET), seed=s)) for s in range(20)]
    floor = [min(simulate(lambda c, e: entropy_bonus_weight(c, e, aim), seed=s, aim=aim)) for s in range(20)]
    assert min(at) < 0.8 * TARGET, min(at)
    assert min(floor) >= TARGET, min(floor)


def test_a_proportional_term_meets_the_first_collapse():
    """The integral alone needs steps to climb, so the first fall dips under the floor even with a
    margin; a proportional term (`entropy_coef_gain`) answers the fall the same step, and it
    vanishes once entropy is back, so it adds no overshoot."""
    aim = 1.4 * TARGET
    runs = {g: [simulate(lambda c, e, g=g: entropy_bonus_weight(c, e, aim, gain=g, max_coef=0.3), seed=s,
                         aim=aim, settle=0) for s in range(20)] for g in (0.0, 0.4)}
    lowest = {g: min(min(r) for r in rs) for g, rs in runs.items()}
    assert lowest[0.0] < 0.8 * TARGET, lowest  # the first collapse goes under the floor...
    assert lowest[0.4] >= TARGET, lowest  # ...and is held above it with the proportional term
    highest = {g: max(max(r[30:]) for r in rs) for g, rs in runs.items()}
    assert highest[0.4] <= highest[0.0] * 1.05, highest


def test_the_gate_is_what_stops_the_overshoot():
    """The same coefficient applied above the target too (no gate) winds up: entropy overshoots."""
    worst = max(max(simulate(lambda c, e: c, seed=s)) for s in range(5))
    assert worst > 1.5 * TARGET, worst


def test_entropy_control_holds_entropy_up(small_model, tmp_path):
    """A target above the run's entropy: the coefficient rises and the bonus pulls entropy up
    against the learning that lowers it (the README's quickstart runs show the real collapse)."""
    free, held = tmp_path / "free", tmp_path / "held"
    train(_cfg(small_model, free, lr=1e-2))
    train(_cfg(small_model, held, lr=1e-2, entropy_target=8.0, entropy_coef_step=0.05, entropy_coef_max=0.5))
    late = lambda rows: sum(r["entropy"] for r in rows[-10:]) / 10  # noqa: E731
    rf, rh = _rows(free), _rows(held)
    assert late(rh) > late(rf) + 0.1, (late(rf), late(rh))
    assert [r["entropy_coef"] for r in rh[:3]] == pytest.approx([0.0, 0.05, 0.1])  # nothing measured before step 1
    assert "entropy_coef" not in rf[-1]


def test_the_run_steers_to_the_aim_above_a_floor_it_never_reaches(small_model, tmp_path):
    """A target far below the run's entropy with a margin that puts the aim far above it: the
    bonus is applied and its coefficient climbs (the aim decides), while no step is logged
    below the target (the floor decides what is reported)."""
    out = tmp_path / "floor"
    train(_cfg(small_model, out, steps=3, lr=1e-2, entropy_target=1e-3, entropy_margin=1e4,
               entropy_coef_step=0.05, entropy_coef_max=0.5))
    rows = _rows(out)
    assert [r["entropy_coef"] for r in rows] == pytest.approx([0.0, 0.05, 0.1])
    assert all(r["entropy_below_target"] == 0.0 and r["entropy"] > 1e-3 for r in rows)


@pytest.mark.parametrize("lookahead", [0.0, 2.0])
def test_entropy_control_resumes_exactly(small_model, tmp_path, lookahead):
    """The coefficient, the last entropy and its trend are in the checkpoint: a resumed run trains alike."""
    full, part = tmp_path / "full", tmp_path / "part"
    kw = dict(steps=6, save_every=3, lr=1e-2, entropy_target=8.0, entropy_coef_step=0.05, entropy_coef_max=0.5,
              entropy_lookahead=lookahead, entropy_coef_gain=0.1)
    train(_cfg(small_model, full, **kw))
    train(_cfg(small_model, part, **{**kw, "steps": 3}))
    train(_cfg(small_model, part, **kw), resume=True)
    a, b = _rows(full), _rows(part)
    assert [r["entropy_coef"] for r in a] == pytest.approx([r["entropy_coef"] for r in b], abs=1e-12)
    assert [r["entropy"] for r in a] == pytest.approx([r["entropy"] for r in b], abs=1e-6)
    assert ckpt.load_state(ckpt.latest(part / "checkpoints"))["entropy_seen"] is not None


def test_the_proportional_term_reaches_the_run(small_model, tmp_path):
    """`entropy_coef_gain` in a real run: the weight a step trains with is the coefficient plus
    gain * (aim - the previous step's entropy) / aim, capped at entropy_coef_max."""
    out = tmp_path / "pi"
    train(_cfg(small_model, out, steps=3, lr=1e-2, entropy_target=8.0, entropy_coef_step=0.05,
               entropy_coef_max=0.5, entropy_coef_gain=0.2))
    rows = _rows(out)
    assert rows[0]["entropy_coef"] == 0.0  # nothing measured before step 1
    for k in (1, 2):
        want = min(0.05 * k + 0.2 * (8.0 - rows[k - 1]["entropy"]) / 8.0, 0.5)
        assert rows[k]["entropy_coef"] == pytest.approx(want, abs=2e-6), k


def test_a_lookahead_answers_the_forecast_not_the_last_step(small_model, tmp_path):
    """`entropy_lookahead`: the bonus reads the entropy L steps on at its trend (logged as
    entropy_forecast), so it is computed from the forecast, not from the last step's entropy."""
    from ponder.rl.ppo import entropy_forecast, entropy_trend
    out = tmp_path / "ahead"
    aim = 4.6  # just under the untrained model's 4.61 nats: the last step is above it, its forecast below
    train(_cfg(small_model, out, steps=4, lr=1e-2, entropy_target=aim, entropy_coef_step=0.05,
               entropy_coef_max=5.0, entropy_coef_gain=50.0, entropy_lookahead=3.0))
    rows = _rows(out)
    trend, prev = 0.0, None
    for k, r in enumerate(rows):
        trend = entropy_trend(trend, r["entropy"], prev)
        prev = r["entropy"]
        assert r["entropy_forecast"] == pytest.approx(entropy_forecast(r["entropy"], trend, 3.0), abs=2e-6)
        if k + 1 < len(rows):
            f = r["entropy_forecast"]
            want = 0.0 if f >= aim else min(rows[k + 1]["entropy_coef_state"] + 50.0 * (aim - f) / aim, 5.0)
            assert rows[k + 1]["entropy_coef"] == pytest.approx(want, abs=1e-5), k
    assert rows[1]["entropy"] > aim and rows[2]["entropy_coef"] > 0  # the forecast, not the last step, decided
