"""`ponder report` on a fake run directory: escaping, plots, tables, missing pieces."""

import doctest
import json
import re

import pytest

from ponder.commands import report
from ponder.core.config import ConfigError
from ponder.commands.report import main, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<think>2+2 is 4</think><script>alert('x')</script> & done"


def _sample(i: int, correct: bool, completion: str = "<think>ok</think> 4") -> dict:
    return {"id": f"p{i}", "difficulty": 1 + i % 3, "thinking_tokens": 5 * i, "answer_tokens": 2,
            "correct": correct, "completion": completion}


def _eval(label: str, acc: float, samples: list[dict]) -> dict:
    return {"label": label, "samples": samples, "summary": {
        "accuracy": acc, "accuracy_ci": [acc - 0.1, acc + 0.1], "pass_at_k": {"1": acc, "8": 0.9},
        "maj_at_k": {"8": acc + 0.05}, "mean_thinking_tokens": 12.5, "self_check_frac": 0.1,
        "n_problems": len(samples)}}


def _fake_run(root, metrics=True, evals=True):
    root.mkdir(exist_ok=True)
    if metrics:
        lines = []
        for step in range(1, 13):
            row = {"step": step, "reward": 0.1 * step, "accuracy": 0.05 * step, "zero_var_frac": 0.5,
                   "think_len_mean": 3.0 * step, "think_len_max": 6 * step, "entropy": 1.0, "kl": 0.01,
                   "clip_frac": 0.02, "self_check_frac": 0.01 * step, "lr": 1e-3}
            if step == 5:
                del row["kl"]  # a missing key must be skipped, not crash
            lines.append(json.dumps(row))
        lines.append('{"step": 13, "rew')  # torn last line of a crashed run
        (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if evals:
        (root / "eval").mkdir()
        before = [_sample(i, i % 4 == 0) for i in range(8)]
        after = [_sample(0, True, EVIL)] + [_sample(i, i % 2 == 0) for i in range(1, 8)]
        # File names sort "after" first; the page must still show before, then after.
        (root / "eval" / "a.json").write_text(json.dumps(_eval("after", 0.6, after)))
        (root / "eval" / "b.json").write_text(json.dumps(_eval("before", 0.25, before)))
    return root


def test_doctests():
    result = doctest.testmod(report)
    assert result.attempted > 0 and result.failed == 0


def test_full_report(tmp_path):
    run = _fake_run(tmp_path / "run1")
    out = write_report(run)
    assert out == run / "report" / "index.html"
    page = out.read_text()

    # Model output is escaped, never live markup.
    assert "<script>" not in page and "</think>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;/think&gt;" in page

    # Every referenced image exists beside the page and is a PNG; no remote resources.
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) == 5
    for name in images:
        assert "/" not in name
        assert (out.parent / name).read_bytes()[:8] == PNG_MAGIC
    assert "http" not in page and "<script" not in page.lower()

    # Eval table: both labels, before first, with the change column.
    assert page.index("<th>before</th>") < page.index("<th>after</th>")
    assert "after − before" in page and "+35.0 pts" in page
    assert "pass@8" in page and "maj@8" in page

    assert "run1" in page
    assert "Last training step" in page
    assert "line 13 is not valid JSON" in page  # the torn line is reported, not fatal
    assert page.count("class='ex ") == 6  # 3 examples per label


def test_missing_metrics_and_evals_are_reported(tmp_path):
    run = _fake_run(tmp_path / "evals_only", metrics=False)
    page = write_report(run).read_text()
    assert "metrics.jsonl not found" in page
    assert len(re.findall(r"<img ", page)) == 2  # only the eval plots

    run = _fake_run(tmp_path / "metrics_only", evals=False)
    page = write_report(run).read_text()
    assert "eval/ not found" in page
    assert len(re.findall(r"<img ", page)) == 3

    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text()
    assert "metrics.jsonl not found" in page and "eval/ not found" in page


def test_bad_eval_file_is_skipped(tmp_path):
    run = _fake_run(tmp_path / "run", metrics=False)
    (run / "eval" / "c.json").write_text("{not json")
    page = write_report(run).read_text()
    assert "eval/c.json is not valid JSON" in page
    assert "<th>before</th>" in page


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.*does not exist"):
        write_report(tmp_path / "nope")


def test_cli_out_flag(tmp_path, capsys):
    run = _fake_run(tmp_path / "run", metrics=False)  # fewer plots: keeps the test fast
    out = tmp_path / "elsewhere" / "page.html"
    assert main([str(run), "--out", str(out)]) == 0
    assert out.is_file() and (out.parent / "accuracy_vs_thinking.png").is_file()
    assert str(out) in capsys.readouterr().out


def test_cli_missing_run_dir_exits_2(tmp_path, capsys):
    from ponder.cli import main as ponder_main
    assert ponder_main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "does not exist" in err and len(err.strip().splitlines()) == 1
