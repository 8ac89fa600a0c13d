"""`ponder scale` and the overthinking report: the JSON contract, budgets honoured, the bar's arithmetic."""

import json

import pytest

from ponder.core.config import ConfigError
from ponder.inference.overthinking import Trace, report, tokens_after_first_correct
from ponder.inference.scale import ScaleConfig, at_tokens, bar, hard_levels, parse_budgets
from r1_fixtures import small_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return small_model(tmp_path_factory.mktemp("model") / "m")


def test_parse_budgets_accepts_effort_and_refuses_out_of_range():
    assert parse_budgets("none, 0, 32, low, high", 128) == [None, 0, 32, 16, -1]
    with pytest.raises(ConfigError, match="valid values"):
        parse_budgets("500", 128)
    with pytest.raises(ConfigError, match="low.*medium.*high"):
        parse_budgets("extreme", 128)
    with pytest.raises(ConfigError, match="multiple of search_width"):
        ScaleConfig(search_n="6", search_width=4)


def test_at_tokens_and_hard_levels():
    assert at_tokens([(100, 0.5), (400, 0.7)], 50) == 0.5
    assert at_tokens([(100, 0.5), (400, 0.7)], 1000) == 0.7
    assert hard_levels([2, 1]) == [2] and hard_levels([3]) == [3]


def test_bar_reads_the_table():
    def e(strategy, samples, acc, tokens):
        return {"strategy": strategy, "samples": samples, "thinking_budget": None, "accuracy": acc,
                "generated_tokens": tokens, "by_difficulty": {"1": {"n": 10, "accuracy": acc, "generated_tokens": tokens}}}
    rows = [e("pass@1", 1, 0.4, 100), e("maj@16", 16, 0.55, 1600), e("maj@1", 1, 0.4, 100),
            {**e("adaptive", 5, 0.545, 500), "batch": 1, "threshold": 0.95}, e("beam_search", 4, 0.6, 400)]
    b = bar(rows, 16)
    assert b["maj_beats_pass1_by_10"] and b["adaptive_meets_bar"] and b["search_beats_majority_on_hard"]


def test_tokens_after_first_correct_intermediate():
    pieces = ["6*7=42", " so 2\n", "3*7+4=25 so ", "252", "\n", "check: 7*36=252\n"]
    assert tokens_after_first_correct(pieces, "252", r"\bso (-?\d+)") == 2  # the two pieces after "so 252"
    assert tokens_after_first_correct(pieces, "999", r"\bso (-?\d+)") is None
    rep = report([Trace(1, 10, True, 2), Trace(1, 40, False, None), Trace(2, 5, True, 0)], bin_width=16)
    assert rep["1"]["accuracy_by_thinking_length"] == [
        {"thinking_tokens": [0, 16], "n": 1, "accuracy": True}, {"thinking_tokens": [32, 48], "n": 1, "accuracy": False}]
    assert rep["1"]["mean_tokens_after_first_correct"] == 2 and rep["2"]["share_of_thinking_after_first_correct"] == 0


def test_scale_end_to_end_writes_the_contract(tiny_folder, tmp_path):
    from ponder.inference.prm import PRMConfig, train_prm
    from ponder.inference.scale import main
    prm = tmp_path / "prm"
    train_prm(PRMConfig(model=tiny_folder, task_options="max_digits=2", out=str(prm), problems=4, rollouts=1,
                        continuations=1, max_new_tokens=16, epochs=5))
    out = tmp_path / "scale.json"
    rc = main([tiny_folder, "--task-options", "max_digits=3", "--problems", "6", "--samples", "4",
               "--budgets", "none,0,5", "--max-new-tokens", "24", "--prm", str(prm), "--search-n", "4",
               "--search-width", "2", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").is_file()
    names = {e["strategy"] for e in result["entries"]}
    assert {"greedy", "pass@1", "maj@4", "adaptive", "allocated", "prm_weighted@4", "beam_search", "dvts"} <= names
    for e in result["entries"]:
        assert 0.0 <= e["accuracy"] <= 1.0 and e["accuracy_ci"][0] <= e["accuracy"] <= e["accuracy_ci"][1]
        assert isinstance(e["generated_tokens"], int) and e["generated_tokens"] > 0
        assert {"strategy", "samples", "thinking_budget"} <= set(e)
        if e["thinking_budget"] == 0:
            assert e["max_thinking_tokens"] == 0
        if e["thinking_budget"] == 5:
            assert e["max_thinking_tokens"] <= 5
    assert "overthinking" in result and "maj_minus_pass1" in result["bar"]
    assert result["complete"] is True and not out.with_name("scale.json.tmp").exists()


def test_scale_keeps_what_it_measured_when_stopped(tiny_folder, tmp_path, monkeypatch):
    import ponder.inference.scale as S
    real = S.pool_entries
    calls = []

    def dies_on_second_budget(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(S, "pool_entries", dies_on_second_budget)
    out = tmp_path / "scale.json"
    with pytest.raises(KeyboardInterrupt):
        S.scale(S.ScaleConfig(model=tiny_folder, task_options="max_digits=2", problems=4, samples=2,
                              budgets="none,0", max_new_tokens=24, json=str(out)))
    partial = json.loads(out.read_text())
    assert partial["complete"] is False
    assert {e["strategy"] for e in partial["entries"]} >= {"greedy", "pass@1", "maj@2"}
    assert all(e["thinking_budget"] is None for e in partial["entries"])


def test_scale_with_tools_counts_the_tools_tokens_apart(tmp_path, monkeypatch):
    """`ponder scale --tools calculator` on the shipped tool base: `generated_tokens` are the model's,
    `tool_tokens` what the calculator wrote, and together they are every completion token of the pool."""
    from ponder.inference.scale import format_table, scale
    cfg = ScaleConfig(model="tiny-tools", tools="calculator", problems=12, samples=8, max_new_tokens=64,
                      task_options="min_digits=6 max_digits=7 ops=add", adaptive_batch="2",
                      json=str(tmp_path / "scale.json"))
    seen = {}
    import ponder.inference.scale as S
    real = S.maybe_tool_rollout

    def spy(*a, **kw):
        out = real(*a, **kw)
        seen[a[3]] = out.groups  # n -> the groups of that pass
        return out
    monkeypatch.setattr(S, "maybe_tool_rollout", spy)
    result = scale(cfg, log=lambda *_: None)
    rows = {e["strategy"]: e for e in result["entries"]}
    pool = seen[8]
    every = sum(len(s.ids) for g in pool for s in g.samples)
    calls = sum(len(c) for g in pool for c in g.calls)
    assert calls > 0  # the base calls on some samples
    assert rows["maj@8"]["generated_tokens"] + rows["maj@8"]["tool_tokens"] == every
    assert rows["maj@8"]["tool_calls"] == calls and rows["maj@8"]["tool_tokens"] > 0
    assert rows["maj@1"]["tool_calls"] == sum(len(g.calls[0]) for g in pool)
    assert "tool tokens" in format_table(result)
    with pytest.raises(ConfigError, match="budgets = 'none'"):
        ScaleConfig(model="tiny-tools", tools="calculator", budgets="none,16")
