"""Rejection sampling: which samples are kept, provenance of each trace, determinism, atomic output."""

import json

import pytest

from ponder.stages.collect import CollectConfig, accept, collect, readable, round_trips
from ponder.core.config import ConfigError
from ponder.engine.engine import Sample
from ponder.core.io import sha256_file
from ponder.stages.sft import read_traces
from ponder.tasks import TASKS
from ponder.core.verdict import correct, wrong
from r1_fixtures import AnyTask, small_model


def _sample(text, think, finish="eos", j=0):
    return Sample(prompt_index=0, sample_index=j, prompt_ids=(1,), ids=tuple(range(len(text) + 1)), text=text,
                  finish=finish, thinking_tokens=think, answer_tokens=1)


def test_readability_filter():
    assert readable(_sample("<think>1+2=3</think>3", 5))
    assert not readable(_sample("<think>1+2=3</think>3", 5, finish="length"))  # cut off, not ended by EOS
    assert not readable(_sample("3", 0))  # no thinking block
    assert not readable(_sample("<think>a</think><think>b</think>3", 3))  # two blocks
    assert not readable(_sample("<think>\u00e9\u4e00</think>3", 2))  # not the task's language


def test_accept_all_and_shortest():
    group = [_sample("<think>aaaa</think>7", 4, j=0), _sample("<think>a</think>7", 1, j=1),
             _sample("<think></think>9", 0, j=2), _sample("7", 0, j=3), _sample("<think>b</think>7", 1, j=4)]
    verdicts = [correct(), correct(), wrong("9"), correct(), correct()]
    assert accept(group, verdicts, "all", need_readable=True) == [0, 1, 4]
    assert accept(group, verdicts, "all", need_readable=False) == [0, 1, 3, 4]
    assert accept(group, verdicts, "shortest", need_readable=True) == [1]  # tie on length: lowest index
    assert accept(group, verdicts, "shortest", need_readable=False) == [3]
    assert accept(group, [wrong("x")] * 5, "shortest", need_readable=True) == []


def test_shortest_across_budgets_only_trusts_reliable_budgets():
    # budget 0: one lucky direct answer in two; budget None: thinks, always right
    group = [_sample("<think></think>7", 0, j=0), _sample("<think></think>8", 0, j=1),
             _sample("<think>ab</think>7", 2, j=2), _sample("<think>abc</think>7", 3, j=3)]
    verdicts = [correct(), wrong("8"), correct(), correct()]
    budget_of = [0, 0, None, None]
    assert accept(group, verdicts, "shortest", True, budget_of=budget_of) == [0]  # plain shortest
    assert accept(group, verdicts, "shortest", True, budget_of=budget_of, min_budget_accuracy=0.5) == [0]
    assert accept(group, verdicts, "shortest", True, budget_of=budget_of, min_budget_accuracy=1.0) == [2]
    # no budget reliable enough: the plain shortest correct sample rather than nothing
    assert accept(group, [correct(), wrong("8"), wrong("1"), correct()], "shortest", True,
                  budget_of=budget_of, min_budget_accuracy=1.0) == [0]
    # "all" is not affected by budgets
    assert accept(group, verdicts, "all", True, budget_of=budget_of, min_budget_accuracy=1.0) == [0, 2, 3]


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "any", AnyTask)
    return small_model(tmp_path / "m")


def _cfg(model, out, **kw):
    base = dict(model=model, task="any", prompts=6, k=3, max_new_tokens=6, readable=False, out=str(out), seed=1)
    base.update(kw)
    return CollectConfig(**base)


def test_collect_writes_traces_with_provenance(model, tmp_path):
    stats = collect(_cfg(model, tmp_path / "all.jsonl"))
    rows = [json.loads(l) for l in (tmp_path / "all.jsonl").read_text().splitlines()]
    # a random model emits some token runs its own tokenizer cannot re-encode: those are dropped
    assert stats["kept"] == len(rows) == 18 - stats["dropped_unencodable"] >= 10 and stats["correct_frac"] == 1.0
    assert {r["prompt_id"] for r in rows} <= {f"train-1-{i}" for i in range(6)}
    r = rows[0]
    assert r["model"] == model and len(r["model_sha256"]) == 64 and r["seed"] == 1 and r["task"] == "any"
    assert r["verdict"] == {"score": 1.0, "status": "correct", "reason": "anything goes"}
    assert len(read_traces(tmp_path / "all.jsonl")) == len(rows)  # SFT reads what collect writes
    assert not (tmp_path / "all.jsonl.tmp").exists()
    # same seed, same traces; shortest keeps one per prompt, with the fewest thinking tokens
    collect(_cfg(model, tmp_path / "again.jsonl"))
    assert sha256_file(tmp_path / "again.jsonl") == stats["sha256"]
    collect(_cfg(model, tmp_path / "short.jsonl", keep="shortest"))
    short = [json.loads(l) for l in (tmp_path / "short.jsonl").read_text().splitlines()]
    assert len(short) == len({r["prompt_id"] for r in rows})
    for s in short:
        group = [r["thinking_tokens"] for r in rows if r["prompt_id"] == s["prompt_id"]]
        assert s["thinking_tokens"] == min(group)


def test_nothing_accepted_fails_and_writes_nothing(model, tmp_path):
    # a random model never writes a well-formed <think>…</think>answer
    with pytest.raises(ConfigError, match="none of 18 samples .* was accepted"):
        collect(_cfg(model, tmp_path / "none.jsonl", readable=True))
    assert list(tmp_path.glob("none.jsonl*")) == []


def test_collect_at_several_budgets(model, tmp_path):
    stats = collect(_cfg(model, tmp_path / "b.jsonl", budgets="none,0", max_new_tokens=24))
    rows = [json.loads(l) for l in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert stats["samples"] == 6 * 3 * 2
    assert {r["thinking_budget"] for r in rows} <= {None, 0} and 0 in {r["thinking_budget"] for r in rows}
    assert all(r["thinking_tokens"] == 0 for r in rows if r["thinking_budget"] == 0)
    assert len({(r["prompt_id"], r["sample_index"]) for r in rows}) == len(rows)  # indices unique across budgets
    # "none" alone draws exactly what a collect without budgets draws
    collect(_cfg(model, tmp_path / "n.jsonl"))
    collect(_cfg(model, tmp_path / "n2.jsonl", budgets="none"))
    assert sha256_file(tmp_path / "n.jsonl") == sha256_file(tmp_path / "n2.jsonl")


@pytest.mark.parametrize("budgets, msg", [("none,lots", "unknown effort 'lots'; valid effort levels: minimal"),
                                          ("0,0", "budgets must be distinct, got '0,0'"),
                                          ("none,500", "thinking_budget 500 is out of range; valid values")])
def test_bad_budgets_are_refused(budgets, msg):
    with pytest.raises(ConfigError, match=msg):
        CollectConfig(budgets=budgets)


def test_config_refuses_unknown_keep():
    with pytest.raises(ConfigError, match="keep = 'longest' is not valid; choose one of: all, shortest"):
        CollectConfig(keep="longest")


def test_samples_whose_text_does_not_round_trip_are_dropped(tiny):
    _, tok = tiny
    ok = Sample(0, 0, (1,), tuple(tok("<think>1\n2</think>3", add_special_tokens=False)["input_ids"]) + (2,),
                "<think>1\n2</think>3", "eos", 3, 1)
    assert round_trips(tok, ok)
    assert not round_trips(tok, Sample(0, 0, (1,), (9, 2), "<think>1\n2</think>3", "eos", 3, 1))  # other tokens
    ids = tuple(tok("<think>1", add_special_tokens=False)["input_ids"]) + (7,)
    assert not round_trips(tok, Sample(0, 0, (1,), ids, "<think>1\t", "length", 2, 0))  # text it cannot encode
    assert accept([ok, ok], [correct(), correct()], "all", True, encodable=[False, True]) == [1]


def test_sft_names_the_trace_the_tokenizer_cannot_encode(tiny, tmp_path):
    from ponder.stages.sft import SFTConfig, TraceFileError, sft
    model, tok = tiny
    from ponder.models.model import save_model
    folder = save_model(model, tok, tmp_path / "m")
    p = tmp_path / "t.jsonl"
    p.write_text('{"prompt": "1+1=?\\n", "completion": "<think></think>2"}\n'
                 '{"prompt": "1+2=?\\n", "completion": "<think>\\u00e9</think>3"}\n')
    with pytest.raises(TraceFileError, match=rf"{p}:2: the model's tokenizer cannot encode this trace"):
        sft(SFTConfig(model=str(folder), data=str(p), out=str(tmp_path / "o"), progress=False))
