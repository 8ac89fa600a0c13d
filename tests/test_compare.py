"""`ponder compare`: paired accuracy difference of two eval files, checked by hand on made-up files."""

import json
import math
import random

import pytest

from ponder.cli import main as cli
from ponder.core.config import ConfigError
from ponder.core.stats import mcnemar_exact_p, paired_difference
from ponder.inference.compare import compare

# problem id -> (A correct, B correct): A solves 6, B solves 8; only A p3, only B p4 p5 p6
TABLE = {"p0": (1, 1), "p1": (1, 1), "p2": (1, 1), "p3": (1, 0), "p4": (0, 1), "p5": (0, 1), "p6": (0, 1),
         "p7": (1, 1), "p8": (1, 1), "p9": (0, 0)}


def _eval_file(path, outcomes: dict, label, shuffle_seed=None):
    rows = [{"id": i, "difficulty": 1, "correct": bool(ok), "status": "correct" if ok else "wrong",
             "completion": "..."} for i, ok in outcomes.items()]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    path.write_text(json.dumps({"label": label, "config": {}, "summary": {}, "samples": rows}))
    return str(path)


@pytest.fixture
def files(tmp_path):
    a = _eval_file(tmp_path / "a.json", {i: x for i, (x, _) in TABLE.items()}, "rl")
    # B's rows in another order: pairing must follow the ids, not the positions
    b = _eval_file(tmp_path / "b.json", {i: y for i, (_, y) in TABLE.items()}, "sft-rl", shuffle_seed=3)
    return a, b


def test_paired_difference_by_hand(files):
    r = compare(*files)
    assert (r["only_a"], r["only_b"], r["both"], r["neither"]) == (1, 3, 5, 1)
    assert (r["acc_a"], r["acc_b"]) == (0.6, 0.8) and r["diff"] == pytest.approx(0.2)
    d = [y - x for x, y in TABLE.values()]  # per-problem differences
    sd = math.sqrt(sum((v - 0.2) ** 2 for v in d) / 9)
    assert r["lo"] == pytest.approx(0.2 - 1.96 * sd / math.sqrt(10))
    assert r["hi"] == pytest.approx(0.2 + 1.96 * sd / math.sqrt(10))
    assert r["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)  # min(1, 3) = 1 of 4 discordant, two-sided


def test_exact_mcnemar_matches_the_binomial_tail():
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * (1 + 10) / 2 ** 10)
    assert mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 12) == pytest.approx(2 / 2 ** 12)


def test_identical_models_tie_and_a_clear_win_does_not():
    same = paired_difference([True, False] * 50, [True, False] * 50)
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0 and same["mcnemar_p"] == 1.0
    win = paired_difference([False] * 60 + [True] * 40, [True] * 100)
    assert win["lo"] > 0.3 and win["mcnemar_p"] < 1e-9
    with pytest.raises(ValueError, match="3 outcomes for A but 2"):
        paired_difference([True] * 3, [True] * 2)


def test_cli_prints_the_difference_the_counts_and_the_tie(files, capsys):
    assert cli(["compare", *files]) == 0
    out = capsys.readouterr().out
    assert "B - A = +0.200, 95% interval [" in out and "only A solved 1, only B solved 3" in out
    assert "a tie" in out  # 10 problems cannot separate 0.6 from 0.8


def test_different_problem_sets_are_refused_in_one_line(tmp_path, files, capsys):
    other = _eval_file(tmp_path / "c.json", {**{i: x for i, (x, _) in TABLE.items() if i != "p9"}, "q1": 1}, "x")
    assert cli(["compare", files[0], other]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "different problems" in err and "'p9'" in err and "'q1'" in err, err


def test_bad_files_are_refused_naming_them(tmp_path, files):
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"samples": [{"id": "p0", "correct": True}, {"id": "p0", "correct": False}]}))
    with pytest.raises(ConfigError, match="'p0' more than once"):
        compare(files[0], dup)
    with pytest.raises(ConfigError, match="does not exist"):
        compare(files[0], tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{\"summary\": {}}")
    with pytest.raises(ConfigError, match="not a `ponder eval --out` file"):
        compare(tmp_path / "junk.json", files[1])
