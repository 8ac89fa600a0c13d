"""`ponder doctor` on synthetic runs in the format ponder writes: one planted pathology per code,
a healthy run, and broken files."""

import doctest
import json
import math
import random

import pytest

from ponder import cli
from ponder.rl import doctor
from ponder.rl.doctor import DoctorError, diagnose_dir, summary_lines

STEPS = 80
MAX_NEW = 128


def healthy_rows(steps: int = STEPS, seed: int = 0) -> list[dict]:
    """A run shaped like the quickstart's: accuracy 0.4 -> 0.85 with per-step noise, thinking
    growing, entropy sharpening moderately, KL small, no truncation or checker failures."""
    rng = random.Random(seed)
    rows = []
    for s in range(1, steps + 1):
        t = min(1.0, s / (0.4 * steps))  # learning over the first 40%, then near the top
        acc = min(1.0, max(0.0, 0.4 + 0.45 * t + rng.gauss(0, 0.04)))
        think = 10 + 30 * t + rng.gauss(0, 3)
        rows.append({
            "step": s, "reward": acc, "accuracy": acc, "invalid_frac": 0.0, "resp_len_mean": think + 7,
            "resp_len_max": min(MAX_NEW, int(think * 2.5)), "think_len_mean": think, "think_len_max": int(think * 2.2),
            "trunc_rate": 0.0 if rng.random() < 0.9 else 0.0078, "self_check_frac": 0.1,
            "zero_var_frac": min(1.0, max(0.0, 0.3 + 0.25 * t + rng.gauss(0, 0.08))), "groups_used": 16,
            "loss": rng.gauss(-0.1, 0.05), "clip_frac": 0.0, "entropy": 1.0 - 0.5 * t + rng.gauss(0, 0.03),
            "kl": 0.03 * t + abs(rng.gauss(0, 0.005)), "grad_norm": abs(rng.gauss(0.3, 0.08)) + 0.02,
            "lr": 2e-4, "step_time": 1.0,
        })
    return rows


CONFIG = {"steps": STEPS, "max_new_tokens": MAX_NEW, "prompts_per_step": 16, "group_size": 8, "lr": 2e-4,
          "kl_coef": 0.0, "grad_clip": 1.0, "temperature": 1.0, "dynamic_sampling": False, "length_weight": 0.0}


def eval_file(label: str, acc: float, n: int = 200) -> dict:
    return {"label": label, "config": {}, "samples": [],
            "summary": {"accuracy": acc, "accuracy_ci": [acc - 0.05, acc + 0.05], "n_problems": n}}


def write_run(root, rows, config=CONFIG, evals=(("before", 0.40), ("after", 0.83))):
    root.mkdir(parents=True, exist_ok=True)
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config is not None:
        (root / "config.json").write_text(json.dumps(config, indent=1))
    if evals:
        (root / "eval").mkdir(exist_ok=True)
        for label, acc in evals:
            (root / "eval" / f"{label}.json").write_text(json.dumps(eval_file(label, acc), indent=1))
    return root


def codes(findings, severity="problem"):
    return {f.code for f in findings if f.severity == severity}


# ---------------------------------------------------------------- planted pathologies

def plant_no_signal(rows):
    for r in rows:
        r.update(reward=0.0, accuracy=0.0, zero_var_frac=1.0, loss=0.0, grad_norm=0.0)


def plant_zero_variance(rows):
    for r in rows[20:]:
        r["zero_var_frac"] = 0.9


def plant_entropy_collapse(rows):
    for r in rows[10:]:
        r["entropy"] = max(0.005, 1.0 * 0.8 ** (r["step"] - 10))


def plant_truncation(rows):
    for r in rows[30:]:
        r["trunc_rate"] = min(0.5, 0.02 * (r["step"] - 30))
        r["resp_len_max"] = MAX_NEW


def plant_invalid(rows):
    for r in rows[40:60]:
        r["invalid_frac"] = 0.2


def plant_kl(rows):
    for r in rows[40:]:
        r["kl"] = 0.03 * 1.2 ** (r["step"] - 40)


def plant_grad(rows):
    for r in rows[40:]:
        r["grad_norm"] = 0.3 * 1.3 ** (r["step"] - 40)


def plant_length_collapse(rows):
    for r in rows[45:]:
        k = min(1.0, (r["step"] - 45) / 10)
        r["think_len_mean"] = 40 * (1 - k) + 3 * k
        r["accuracy"] = r["reward"] = r["accuracy"] - 0.3 * k


def plant_plateau(rows):
    rng = random.Random(1)
    for r in rows:
        r["reward"] = r["accuracy"] = 0.35 + rng.gauss(0, 0.04)


PLANTS = {
    "no_signal": plant_no_signal,
    "zero_variance": plant_zero_variance,
    "entropy_collapse": plant_entropy_collapse,
    "truncation": plant_truncation,
    "invalid_verdicts": plant_invalid,
    "kl_blowup": plant_kl,
    "length_collapse": plant_length_collapse,
    "plateau": plant_plateau,
}


def test_healthy_run_has_no_problem(tmp_path):
    findings = diagnose_dir(write_run(tmp_path / "run", healthy_rows()))
    assert codes(findings) == set(), [f.to_json() for f in findings]


@pytest.mark.parametrize("code", sorted(PLANTS))
def test_planted_pathology_is_a_problem(tmp_path, code):
    rows = healthy_rows()
    PLANTS[code](rows)
    findings = diagnose_dir(write_run(tmp_path / "run", rows))
    assert code in codes(findings), [f.to_json() for f in findings]
    f = next(f for f in findings if f.code == code and f.severity == "problem")
    assert f.steps[0] <= f.steps[1] and f.explanation and f.suggestion


def test_gradient_norm_runaway_is_a_kl_blowup(tmp_path):
    rows = healthy_rows()
    plant_grad(rows)
    findings = diagnose_dir(write_run(tmp_path / "run", rows))
    f = next(f for f in findings if f.code == "kl_blowup")
    assert f.severity == "problem" and "gradient norm" in f.explanation and f.steps[0] >= 41


def test_planted_steps_are_located(tmp_path):
    rows = healthy_rows()
    plant_invalid(rows)  # steps 41-60
    f = next(f for f in diagnose_dir(write_run(tmp_path / "run", rows)) if f.code == "invalid_verdicts")
    assert f.steps == (41, 60)


def test_reward_hacking_from_eval_files(tmp_path):
    rows = healthy_rows()
    flat = write_run(tmp_path / "hack", rows, evals=(("before", 0.40), ("after", 0.41)))
    assert "reward_hacking" in codes(diagnose_dir(flat))
    assert "reward_hacking" not in codes(diagnose_dir(write_run(tmp_path / "ok", rows)))


def test_reward_hacking_from_periodic_evals(tmp_path):
    rows = healthy_rows()
    for r in rows:  # held-out accuracy logged every 20 steps, stuck while train reward climbs
        if r["step"] % 20 == 0:
            r["eval_accuracy"] = 0.42
    rows[0]["eval_accuracy"] = 0.40
    findings = diagnose_dir(write_run(tmp_path / "run", rows, evals=()))
    assert "reward_hacking" in codes(findings)


def test_reward_hacking_from_named_step_files(tmp_path):
    rows = healthy_rows()
    run = write_run(tmp_path / "run", rows, evals=(("step-0", 0.4), ("step_80", 0.39)))
    assert "reward_hacking" in codes(diagnose_dir(run))


def test_reward_hacking_from_loosely_named_files(tmp_path):
    run = write_run(tmp_path / "run", healthy_rows(), evals=(("eval_base", 0.4), ("final", 0.4)))
    hack = next(f for f in diagnose_dir(run) if f.code == "reward_hacking")
    assert hack.severity == "problem" and hack.steps == (0, STEPS)
    (run / "eval" / "mystery.json").write_text(json.dumps(eval_file("mystery", 0.9)))
    note = next(f for f in diagnose_dir(run) if f.code == "read")
    assert "eval/mystery.json: cannot tell which step" in note.explanation


def test_no_held_out_evals_is_noted(tmp_path):
    findings = diagnose_dir(write_run(tmp_path / "run", healthy_rows(), evals=()))
    note = next(f for f in findings if f.code == "reward_hacking")
    assert note.severity == "info" and "eval/before.json" in note.suggestion


def test_reward_rising_without_accuracy_warns_without_evals(tmp_path):
    rows = healthy_rows()
    for r in rows:  # format reward paid, correctness flat
        r["accuracy"] = 0.4
    findings = diagnose_dir(write_run(tmp_path / "run", rows, evals=()))
    assert "reward_hacking" in codes(findings, "warning")


def test_solved_plateau_is_not_a_problem(tmp_path):
    rows = healthy_rows()
    for r in rows:
        r["reward"] = r["accuracy"] = min(1.0, r["accuracy"] + 0.08)
    findings = diagnose_dir(write_run(tmp_path / "run", rows))
    assert "plateau" not in codes(findings) and "plateau" in codes(findings, "info")


# ---------------------------------------------------------------- robustness

def test_resumed_run_keeps_the_last_line_of_a_step(tmp_path):
    rows = healthy_rows()
    dead = [dict(r, invalid_frac=0.9) for r in rows[30:50]]  # the first attempt at steps 31-50 ...
    run = write_run(tmp_path / "run", rows[:50] + [])
    text = "".join(json.dumps(r) + "\n" for r in rows[:30] + dead + rows[30:])  # ... redone after a resume
    (run / "metrics.jsonl").write_text(text)
    findings = diagnose_dir(run)
    assert not any(f.code == "invalid_verdicts" for f in findings)
    assert doctor.load_run(run).steps == list(range(1, STEPS + 1))


def test_nan_values_are_skipped(tmp_path):
    rows = healthy_rows()
    for r in rows[::7]:
        r.update(entropy=math.nan, kl=math.nan, reward=math.nan)
    run = write_run(tmp_path / "run", rows)
    assert "NaN" in (run / "metrics.jsonl").read_text()  # the way RunLog writes it
    assert codes(diagnose_dir(run)) == set()


@pytest.mark.parametrize("code", ["entropy_collapse", "truncation", "zero_variance"])
def test_nan_values_do_not_hide_a_pathology(tmp_path, code):
    rows = healthy_rows()
    PLANTS[code](rows)
    for r in rows[::5]:
        r.update(entropy=math.nan, trunc_rate=math.nan, zero_var_frac=math.nan)
    assert code in codes(diagnose_dir(write_run(tmp_path / "run", rows)))


def test_old_run_without_keys_skips_checks_with_info(tmp_path):
    rows = [{k: v for k, v in r.items() if k not in ("trunc_rate", "zero_var_frac", "invalid_frac", "entropy")}
            for r in healthy_rows()]
    findings = diagnose_dir(write_run(tmp_path / "run", rows, config=None, evals=()))
    skipped = {f.code for f in findings if f.severity == "info" and "not logged" in f.explanation}
    assert {"truncation", "zero_variance", "invalid_verdicts", "entropy_collapse"} <= skipped
    assert codes(findings) == set()


def test_truncation_without_trunc_rate_uses_lengths(tmp_path):
    rows = healthy_rows()
    for r in rows:
        del r["trunc_rate"]
    for r in rows[40:]:
        r["resp_len_mean"], r["resp_len_max"] = 124.0, MAX_NEW
    assert "truncation" in codes(diagnose_dir(write_run(tmp_path / "run", rows)))


@pytest.mark.parametrize("n", [1, 3, 6, 19])
def test_short_runs_do_not_crash(tmp_path, n):
    findings = diagnose_dir(write_run(tmp_path / "run", healthy_rows(n), evals=()))
    assert codes(findings) == set()


def test_short_dead_run_is_still_no_signal(tmp_path):
    rows = healthy_rows(6)
    plant_no_signal(rows)
    assert "no_signal" in codes(diagnose_dir(write_run(tmp_path / "run", rows, evals=())))


def test_no_signal_is_not_repeated_as_zero_variance_or_plateau(tmp_path):
    rows = healthy_rows()
    plant_no_signal(rows)
    assert codes(diagnose_dir(write_run(tmp_path / "run", rows))) & {"zero_variance", "plateau"} == set()


def test_torn_last_line_is_noted_not_fatal(tmp_path):
    run = write_run(tmp_path / "run", healthy_rows())
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 81, "rew')
    findings = diagnose_dir(run)
    assert any(f.code == "read" and "line 81" in f.explanation for f in findings)


def test_quickstart_layout(tmp_path):
    """quickstart: OUT/metrics.jsonl (a copy), OUT/eval/{before,after}.json, OUT/rl/config.json."""
    run = write_run(tmp_path / "qs", healthy_rows(), config=None)
    (run / "rl").mkdir()
    (run / "rl" / "config.json").write_text(json.dumps(dict(CONFIG, max_new_tokens=40)))
    rows = healthy_rows()
    for r in rows:
        r["trunc_rate"] = 0.3
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = next(f for f in diagnose_dir(run) if f.code == "truncation")
    assert "max_new_tokens = 40" in f.explanation


def test_pipeline_run_is_diagnosed_per_stage(tmp_path):
    root = tmp_path / "pipe"
    root.mkdir()
    (root / "pipeline.json").write_text(json.dumps({"recipe": "r1.toml", "stages": ["base_eval", "rl"]}))
    (root / "base_eval").mkdir()
    (root / "base_eval" / "eval.json").write_text(json.dumps(eval_file("base_eval", 0.40)))
    stage = write_run(root / "rl", healthy_rows(), evals=())
    (stage / "eval.json").write_text(json.dumps(eval_file("rl", 0.40)))
    (stage / "manifest.json").write_text(json.dumps({"stage": "rl", "kind": "rl", "config": CONFIG, "inputs": {
        "parent": {"model": str(root / "base_eval" / "model"), "sha256": ""}, "data": []}}))
    sft = root / "sft"  # an SFT stage logs only its loss: not diagnosed
    sft.mkdir()
    (sft / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "grad_norm": 1.0}\n')
    (root / "pipeline.json").write_text(json.dumps({"recipe": "r1.toml", "stages": ["base_eval", "sft", "rl"]}))
    findings = diagnose_dir(root)
    assert {f.stage for f in findings} == {"rl"}
    with pytest.raises(DoctorError, match="not an RL run"):
        diagnose_dir(sft)
    hack = next(f for f in findings if f.code == "reward_hacking")
    assert hack.severity == "problem" and hack.stage == "rl" and "parent stage" in hack.explanation
    assert doctor.to_json(findings)["findings"][0]["stage"] == "rl"


# ---------------------------------------------------------------- bad files: one-line errors

@pytest.mark.parametrize("content, expected", [
    ('{"step": 1, "reward": 0.5}\nnot json\n{"step": 3}\n', "metrics.jsonl line 2: not valid JSON"),
    ('{"step": 1, "reward": "high"}\n', "metrics.jsonl line 1: 'reward' is 'high'"),
    ('{"step": 1}\n[1, 2]\n', "metrics.jsonl line 2: a step must be a JSON object"),
    ('{"step": "one"}\n', "metrics.jsonl line 1: \"step\" is 'one'"),
    ('{"step": 1, "kl": true}\n', "metrics.jsonl line 1: 'kl' is True"),
    ("\n\n", "metrics.jsonl has no steps"),
])
def test_bad_metrics_file(tmp_path, content, expected):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(content)
    with pytest.raises(DoctorError, match="^" + expected.replace("[", r"\[").replace("(", r"\(")) as e:
        diagnose_dir(run)
    assert "\n" not in str(e.value)


def test_bad_bytes_name_the_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"step": 1}\n{"step": 2, "x": "\xff"}\n')
    with pytest.raises(DoctorError, match="metrics.jsonl line 2: not UTF-8"):
        diagnose_dir(run)


def test_bad_config_and_eval_files(tmp_path):
    run = write_run(tmp_path / "run", healthy_rows())
    (run / "config.json").write_text('{\n "steps": 80,\n "lr": oops\n}')
    with pytest.raises(DoctorError, match=r"^config.json line 3: not valid JSON"):
        diagnose_dir(run)
    (run / "config.json").write_text(json.dumps(CONFIG))
    (run / "eval" / "after.json").write_text('{"label": "after", "summary": {"n_problems": 3}}')
    with pytest.raises(DoctorError, match=r"^eval/after.json: no number at summary.accuracy"):
        diagnose_dir(run)


def test_missing_run_or_metrics(tmp_path):
    with pytest.raises(DoctorError, match="does not exist"):
        diagnose_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DoctorError, match="metrics.jsonl' not found"):
        diagnose_dir(tmp_path / "empty")


def test_cli_error_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    assert cli.main(["doctor", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ponder doctor: metrics.jsonl line 2: not valid JSON (Expecting property name enclosed in " \
                  "double quotes at column 2)"


# ---------------------------------------------------------------- output

def test_cli_json_shape(tmp_path, capsys):
    rows = healthy_rows()
    plant_truncation(rows)
    run = write_run(tmp_path / "run", rows)
    assert cli.main(["doctor", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"findings"}
    for f in out["findings"]:
        assert set(f) == {"code", "severity", "steps", "explanation", "suggestion"}
        assert f["severity"] in ("problem", "warning", "info")
        assert len(f["steps"]) == 2 and f["steps"][0] <= f["steps"][1]
    assert any(f["code"] == "truncation" and f["severity"] == "problem" for f in out["findings"])
    assert cli.main(["doctor", str(run), "--strict"]) == 1
    text = capsys.readouterr().out
    assert "PROBLEM truncation (steps" in text and "what to change: Raise --max-new-tokens (now 128)" in text


def test_summary_lines_for_train(tmp_path):
    rows = healthy_rows()
    plant_kl(rows)
    lines = summary_lines(write_run(tmp_path / "run", rows))
    assert lines[0].startswith("doctor: 1 problem(s)") and any("kl_blowup" in l for l in lines[1:])
    assert summary_lines(tmp_path / "missing")[0].startswith("doctor: cannot check this run:")
    assert summary_lines(write_run(tmp_path / "ok", healthy_rows())) == ["doctor: no problems found"]


def test_doctests():
    assert doctest.testmod(doctor).failed == 0


def test_report_page_has_the_findings(tmp_path):
    pytest.importorskip("matplotlib")
    from ponder.commands.report import write_report
    rows = healthy_rows(30)
    for r in rows[10:20]:
        r["invalid_frac"] = 0.3
    page = write_report(write_run(tmp_path / "run", rows)).read_text()
    assert "<h2>Doctor</h2><p>problems found" in page
    assert "<b>problem</b> <code>invalid_verdicts</code> (steps 11-20)" in page
    (tmp_path / "run" / "config.json").write_text("{oops")
    page = write_report(tmp_path / "run").read_text()
    assert "doctor could not check the run: config.json line 1: not valid JSON" in page


def test_problems_are_listed_earliest_first(tmp_path):
    rows = healthy_rows()
    plant_kl(rows)  # KL runs away from step 41 ...
    for r in rows[60:]:  # ... and the model is broken from step 61
        r.update(reward=0.0, accuracy=0.0, zero_var_frac=1.0, loss=0.0, grad_norm=0.0)
    problems = [f for f in diagnose_dir(write_run(tmp_path / "run", rows)) if f.severity == "problem"]
    assert [f.code for f in problems][:2] == ["kl_blowup", "no_signal"]
    assert [f.steps[0] for f in problems] == sorted(f.steps[0] for f in problems)


def test_entropy_sharpening_on_a_solved_task_is_only_a_note(tmp_path):
    rows = healthy_rows()
    for r in rows[30:]:  # 15% of the start, as the quickstart's run does, while accuracy is ~0.85
        r["entropy"] = 0.15
    f = next(f for f in diagnose_dir(write_run(tmp_path / "run", rows)) if f.code == "entropy_collapse")
    assert f.severity == "info"
    for r in rows:
        r["reward"] = r["accuracy"] = min(r["accuracy"], 0.6)
    f = next(f for f in diagnose_dir(write_run(tmp_path / "run2", rows)) if f.code == "entropy_collapse")
    assert f.severity == "problem"
    assert "--entropy-target" in f.suggestion  # the fix ponder has for it is named


@pytest.mark.parametrize("key, value, code", [("entropy", 0.0, "entropy_collapse"), ("trunc_rate", 0.6, "truncation")])
def test_a_collapse_in_the_last_steps_is_reported(tmp_path, key, value, code):
    rows = healthy_rows(200)
    for r in rows[-5:]:  # 2.5% of the run, but still going on when it ended
        r[key] = value
    assert code in codes(diagnose_dir(write_run(tmp_path / "run", rows)))
