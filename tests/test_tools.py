"""Tools inside the completion: the calculator, the sandboxed python tool, and the rollout loop
that pauses a row for a call (`ponder.verifiers.tools`, `ponder.rl.tool_rollout`).

The rollout tests drive the real engine (its HF backend) with `ScriptedLM`, a model whose
next-token distribution is read off a script: at each position of the completion -- tool
outputs left out -- one allowed character (near-certain) or several (a uniform choice, so
the row's random stream matters). It writes the tool calls a test needs, at once and exactly.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from run_files import metrics
from transformers import DynamicCache, LlamaConfig

from ponder.core.config import ConfigError
from ponder.core.verdict import correct, wrong
from ponder.engine.engine import Engine, SamplingParams, row_seed
from ponder.models.tokenizer import build_char_tokenizer
from ponder.rl.tool_rollout import (ToolGroup, generate_with_tools, masked_completion, rollout_with_tools,
                                    segment_seed, tool_metrics)
from ponder.rl.train import build_batch, StepRollouts
from ponder.core.example import Example
from ponder.verifiers import sandbox
from ponder.verifiers.tools import (OUTPUT_CLOSE, OUTPUT_OPEN, Tool, ToolError, ToolFields, Toolbox, calculate,
                                    parse_tools)
from tests.sandbox_support import needs_bwrap

# ------------------------------------------------------------------ calculator


@pytest.mark.parametrize("expr, value", [
    ("0.1+0.2", "0.3"),  # binary floats would give 0.30000000000000004
    ("123456789012345678901234567890*987654321098765432109876543210",
     str(123456789012345678901234567890 * 987654321098765432109876543210)),
    ("999999+1", "1000000"),
    ("-(12.50*3)/4", "-9.375"),
    ("48.25*3+0.75", "145.50"),
    ("10/4", "2.5"),
    ("1/3", "0.33333333333333333333"),
    ("--5 - 7", "-2"),
    ("(((2)))*(3-1)", "4"),
])
def test_calculator_is_exact(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr, why", [
    ("__import__('os').system('true')", "not Call"),
    ("x+1", "not Name"),
    ("2**10", "not Pow"),
    ("7%3", "not Mod"),
    ("1e400", "not a plain decimal"),
    ("0x10", "not a plain decimal"),
    ("1_000", "not a plain decimal"),
    ("2j", "not Constant"),
    ("'a'*3", "not Constant"),
    ("[1][0]", "not Subscript"),
    ("(lambda: 1)()", "not Call"),
    ("1 if 1 else 2", "not IfExp"),
    ("+3", "not UAdd"),
    ("1/0", "division by zero"),
    ("9" * 40 + "*" + "9" * 40, "more than 60 digits"),
    ("", "empty"),
    ("1+", "cannot parse"),
    ("1" * 2000, "longer than"),
])
def test_calculator_refuses_everything_but_arithmetic(expr, why):
    with pytest.raises(ToolError, match=why):
        calculate(expr)


def test_tool_specs_are_checked():
    assert parse_tools("calculator, python ,lookup=mod:fn") == [("calc", "calculator"), ("python", "python"),
                                                                ("lookup", "mod:fn")]
    for bad, why in [("calculater", "unknown tool 'calculater'"), ("output=m:f", "must match"),
                     ("calculator,calculator", "twice"), ("Bad=m:f", "must match")]:
        with pytest.raises(ConfigError, match=why):
            parse_tools(bad)
    assert Toolbox.from_fields(ToolFields()) is None


def test_user_tool_is_called_and_its_failure_is_an_error_output(tmp_path):
    (tmp_path / "mytools.py").write_text("def shout(text):\n    return text.upper()\n"
                                         "def broken(text):\n    raise KeyError(text)\n")
    box = Toolbox.from_fields(ToolFields(tools="shout=mytools.py:shout,broken=mytools.py:broken"), tmp_path)
    assert box.stops == ("</shout>", "</broken>")
    ok = box.call("shout", "hi", 0)
    assert (ok.output, ok.error) == ("HI", False)
    bad = box.call("broken", "k", 0)
    assert bad.error and bad.output == "error: broken: KeyError: 'k'"
    capped = box.call("shout", "hi", calls_so_far=box.max_calls)
    assert capped.error and "at most 4 tool calls" in capped.output
    with pytest.raises(ConfigError, match="tool 'nope'"):
        Toolbox.from_fields(ToolFields(tools="nope=mytools.py:missing"), tmp_path)


def test_find_call_reads_the_last_call():
    box = Toolbox([Tool("calc", calculate)], 4)
    assert box.find_call("<calc>1+1</calc><output>2</output> then <calc>2*3</calc>") == ("calc", "2*3")
    assert box.find_call("<calc>1+1</calc> and more") is None
    assert box.find_call("no opening</calc>") == ("calc", "")


# ------------------------------------------------------------------ a scripted model


class ScriptedLM(torch.nn.Module):
    """Next-token logits from a script; the token ids ride in the KV cache (one layer, one head).

    `scripts[prompt]` is the completion as a sequence of positions, each a string of the
    characters allowed there (one: the model writes it; several: uniform among them),
    written `[ab]` for a choice (one position per token of the char tokenizer); tool outputs (`<output>…</output>`) are skipped when the
    completion is matched against the script. Past its end the model writes EOS.
    """

    def __init__(self, tok, scripts: dict[str, str]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, so the engine finds a device
        self.tok, self.config = tok, LlamaConfig(num_hidden_layers=1, vocab_size=len(tok))
        self.scripts = {p: [set(c[1:-1]) if c.startswith("[") else {c}
                            for c in re.findall(r"\[[^\]]+\]|</?think>|.", s, re.S)] for p, s in scripts.items()}
        self.vocab = tok.get_vocab()

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True):
        cache = past_key_values if past_key_values is not None else DynamicCache(config=self.config)
        x = input_ids.float()[:, None, :, None]  # (B, 1, T, 1)
        keys, _ = cache.update(x, x, 0)
        history = keys[:, 0, :, 0].long()  # (B, S)
        logits = torch.zeros(input_ids.size(0), input_ids.size(1), len(self.tok))
        for b in range(input_ids.size(0)):
            ids = history[b][attention_mask[b, -history.size(1):].bool()].tolist()
            logits[b, -1] = self._next(self.tok.decode(ids, skip_special_tokens=True))
        return SimpleNamespace(logits=logits, past_key_values=cache)

    def _next(self, text: str) -> torch.Tensor:
        prompt = next(p for p in self.scripts if text.startswith(p))
        done = re.sub(r"<output>.*?</output>", "", text[len(prompt):], flags=re.S)
        pieces = re.findall(r"</?think>|.", done, re.S)  # one per token of the char tokenizer
        script = self.scripts[prompt]
        out = torch.full((len(self.tok),), -30.0)
        allowed = script[len(pieces)] if len(pieces) < len(script) else {self.tok.eos_token}
        for piece in allowed:
            out[self.vocab[piece]] = 10.0
        return out


def scripted_engine(scripts: dict[str, str]) -> Engine:
    tok = build_char_tokenizer()
    return Engine(ScriptedLM(tok, scripts), tok, fast=False)


SCRIPTS = {
    # calls at different places, a random choice before and after each, so segments sample
    "A:": "<think>[xyz]<calc>12+30</calc>[ab] so[cd]</think>[pq]",
    "B:": "<think>[ab]<calc>6*7</calc>[cd]<calc>1/4</calc>[ef]</think>ok",
    "C:": "<think>[abc]none</think>9",
    "D:": "<think>w[xy]z[ab]<calc>2-5</calc>[uv]</think>[123]",
}


def run_tools(engine, prompts, n, toolbox, seed=0, limit=100, temperature=1.0):
    ids = [engine.encode(p) for p in prompts]
    seeds = [[row_seed(seed, i, j) for j in range(n)] for i in range(len(prompts))]
    return generate_with_tools(engine, ids, n, SamplingParams(max_new_tokens=limit, temperature=temperature),
                               seeds, [limit] * len(prompts), toolbox)


def calc_box(max_calls=4):
    return Toolbox([Tool("calc", calculate)], max_calls)


def test_tool_output_is_appended_and_the_row_continues():
    e = scripted_engine(SCRIPTS)
    (a,), (b,) = [run_tools(e, [p], 1, calc_box())[:1] for p in ("A:", "B:")]
    assert re.fullmatch(r"<think>[xyz]<calc>12\+30</calc><output>42</output>[ab] so[cd]</think>[pq]", a.sample.text)
    assert "<calc>6*7</calc><output>42</output>" in b.sample.text
    assert "<calc>1/4</calc><output>0.25</output>" in b.sample.text
    assert b.sample.finish == "eos" and [c.output for c in b.calls] == ["42", "0.25"]


def test_tool_output_tokens_have_loss_mask_zero():
    e = scripted_engine(SCRIPTS)
    out = run_tools(e, list(SCRIPTS), 2, calc_box())
    tok = e.tok
    for t in out:
        ids, mask = t.sample.ids, t.loss_mask
        assert len(mask) == len(ids)
        masked = tok.decode([i for i, m in zip(ids, mask) if m == 0])
        outputs = "".join(f"{OUTPUT_OPEN}{c.output}{OUTPUT_CLOSE}" for c in t.calls)
        assert masked == outputs  # exactly the tools' tokens are masked, nothing of the model's
        assert tok.decode([i for i, m in zip(ids, mask) if m == 1]) == \
            re.sub(r"<output>.*?</output>", "", tok.decode(ids), flags=re.S)
    assert sum(len(t.calls) for t in out) == 2 * (1 + 2 + 0 + 1)


def test_the_update_sees_no_tool_output_token():
    """Through `build_batch` (the loss and the KL both use its completion mask): every position
    whose next token a tool wrote is 0, every model-sampled position 1."""
    e = scripted_engine(SCRIPTS)
    task = SimpleNamespace(verify=lambda text, ex: correct("") if "42" in text else wrong(""))
    examples = [Example(id=p, prompt=p, answer="") for p in ("A:", "B:", "C:")]
    result = rollout_with_tools(e, task, examples, 2, SamplingParams(max_new_tokens=100), 0, calc_box())
    groups = result.groups
    assert all(isinstance(g, ToolGroup) for g in groups)
    rolled = StepRollouts(groups, [torch.tensor(g.rewards) for g in groups], {})
    batch = build_batch(rolled, e.pad_id, lambda r: r - r.mean(dim=1, keepdim=True))
    samples = [s for g in groups for s in g.samples]
    masks = [m for g in groups for m in g.loss_masks]
    for b, (s, m) in enumerate(zip(samples, masks)):
        start = len(s.prompt_ids) - 1
        assert batch.comp[b, start:start + len(m)].tolist() == [float(x) for x in m]
        assert batch.comp[b].sum().item() == sum(m)
        tool_positions = (batch.comp[b] == 0).nonzero().flatten()
        tool_positions = tool_positions[(tool_positions >= start) & (tool_positions < start + len(m))]
        assert e.tok.decode(batch.ids[b, tool_positions + 1].tolist()) == \
            "".join(f"<output>{c.output}</output>" for c in g_calls(groups, b))
    metrics = tool_metrics(groups)
    assert metrics["tool_calls"] == pytest.approx((1 + 2 + 0) / 3)
    assert metrics["tool_errors"] == 0 and metrics["tool_tokens"] > 0
    assert result.generated_tokens == sum(sum(m) for m in masks)


def g_calls(groups, b):
    flat = [cs for g in groups for cs in g.calls]
    return flat[b]


def test_masked_completion_leaves_plain_groups_alone():
    comp = torch.ones(2, 5)
    assert masked_completion(comp, []) is comp


def test_a_row_paused_for_a_tool_gives_the_tokens_it_gives_alone():
    e = scripted_engine(SCRIPTS)
    prompts = list(SCRIPTS)
    together = run_tools(e, prompts, 3, calc_box(), seed=7)
    for i, p in enumerate(prompts):
        for j in range(3):
            (alone,) = generate_with_tools(e, [e.encode(p)], 1, SamplingParams(max_new_tokens=100),
                                           [[row_seed(7, i, j)]], [100], calc_box())
            assert alone.sample.ids == together[i * 3 + j].sample.ids, (i, j)
            assert alone.loss_mask == together[i * 3 + j].loss_mask
    # the choices after a call really are sampled (the test would pass vacuously otherwise)
    after = {t.sample.text.split("</calc>")[1][len("<output>42</output>")] for t in together[:3]}
    texts = {t.sample.text for t in run_tools(e, ["A:"] * 12, 1, calc_box(), seed=1)}
    assert len(texts) > 3 and after <= set("ab")


def test_segment_seeds_differ_and_a_completion_without_calls_is_the_engines(tiny):
    model, tok = tiny  # a random model: never writes a closing tag in 24 tokens
    e = Engine(model, tok)
    prompts = ["12+34=?\n", "5*7=?\n"]
    sp = SamplingParams(max_new_tokens=24, temperature=1.0)
    seeds = [[row_seed(3, i, j) for j in range(2)] for i in range(2)]
    plain = e.generate_ids([e.encode(p) for p in prompts], 2, sp, seeds, [24, 24])
    tooled = generate_with_tools(e, [e.encode(p) for p in prompts], 2, sp, seeds, [24, 24], calc_box())
    assert [t.sample.ids for t in tooled] == [s.ids for s in plain]
    assert [t.sample.text for t in tooled] == [s.text for s in plain]
    assert all(set(t.loss_mask) == {1} for t in tooled)
    assert len({segment_seed(5, k) for k in range(10)}) == 10


def test_call_cap_token_limit_and_budgets():
    e = scripted_engine(SCRIPTS)
    (capped,) = run_tools(e, ["B:"], 1, calc_box(max_calls=1), limit=160)
    assert [c.error for c in capped.calls] == [False, True]
    assert "<output>error: at most 1 tool calls per completion</output>" in capped.sample.text
    (short,) = run_tools(e, ["A:"], 1, calc_box(), limit=20)  # the output does not fit: cut, row ends
    assert len(short.sample.ids) == 20 and short.sample.finish == "length"
    with pytest.raises(ConfigError, match="thinking budgets"):
        generate_with_tools(e, [e.encode("A:")], 1, SamplingParams(max_new_tokens=40, thinking_budget=8),
                            [[1]], [40], calc_box())


def test_a_slow_call_does_not_hold_up_the_other_rows():
    """Rows keep decoding while a call runs: the slow row's call overlaps the others' decoding."""
    seen = {}

    def slow(text):
        seen["start"] = time.perf_counter()
        time.sleep(0.5)
        return "ok"

    e = scripted_engine({"S:": "<think><slow>x</slow>y</think>1", "F:": "<think>" + "abcdefghij" * 3 + "</think>2"})
    box = Toolbox([Tool("slow", slow)], 4)
    steps = []
    original = e.batch

    def batch(**kw):
        b = original(**kw)
        step = b.step
        b.step = lambda: steps.append(time.perf_counter()) or step()
        return b

    e.batch = batch
    out = run_tools(e, ["S:", "F:"], 1, box, limit=60)
    assert out[0].calls[0].output == "ok" and out[1].sample.text.endswith("</think>2")
    assert sum(seen["start"] < t < seen["start"] + 0.5 for t in steps) >= 10  # F decoded during the call


# ------------------------------------------------------------------ python, in the sandbox

PY_SCRIPTS = {
    "hang:": "<think><python>while True: pass</python>k</think>1",
    "flood:": "<think><python>print('x' * 10**7)</python>k</think>2",
    "crash:": "<think><python>import os; os.abort()</python>k</think>3",
    "raise:": "<think><python>1/0</python>k</think>4",
    "fine:": "<think><python>sum(range(10))</python>k</think>5",
}


def python_box(**kw) -> Toolbox:
    # a wall limit with room for a loaded machine: the hang is stopped by its CPU time first
    fields = ToolFields(tools="python", tool_wall_seconds=15.0, tool_cpu_seconds=1.0, tool_output_bytes=2048, **kw)
    return Toolbox.from_fields(fields)


@needs_bwrap
def test_hanging_flooding_and_crashing_calls_end_in_an_error_inside_the_episode():
    e = scripted_engine(PY_SCRIPTS)
    out = run_tools(e, list(PY_SCRIPTS), 1, python_box(), limit=160)
    by = {t.sample.text.split("<python>")[0]: t for t in out}
    texts = [t.sample.text for t in out]
    assert re.search(r"<output>error: python: (stopped at the CPU-time limit \(1 s\)|timed out after 15 s)"
                     r"</output>k</think>1", texts[0]), texts[0]
    assert "<output>error: python: output passed 2048 bytes and the run was stopped</output>k</think>2" in texts[1]
    assert re.search(r"<output>error: python: exit status 134</output>k</think>3", texts[2]), texts[2]
    assert "<output>error: python: ZeroDivisionError: division by zero</output>k</think>4" in texts[3]
    assert "<output>45</output>k</think>5" in texts[4]
    assert [c.error for t in out for c in t.calls] == [True, True, True, True, False]
    assert all(t.sample.finish == "eos" for t in out) and by
    assert tool_metrics([ToolGroup(None, tuple(t.sample for t in out), (), (), loss_masks=tuple(t.loss_mask for t in out),
                                   calls=tuple(t.calls for t in out))])["tool_errors"] == pytest.approx(0.8)


def escape_script(target: Path) -> dict[str, str]:
    code = f"open({str(target)!r}, 'w').write('escaped')"
    return {"x:": f"<think><python>{code}</python>k</think>1"}


@needs_bwrap
def test_python_calls_never_touch_the_host(tmp_path):
    """An exploit-style call writes to a host path; inside bubblewrap the host's folders are not
    there (or read-only), so the file never appears -- only ever run inside the sandbox."""
    target = tmp_path / f"escaped-{secrets.token_hex(4)}"
    (out,) = run_tools(scripted_engine(escape_script(target)), ["x:"], 1, python_box(), limit=200)
    assert out.calls[0].error and "Error" in out.calls[0].output
    assert not target.exists()


def test_without_a_sandbox_python_is_refused_and_the_code_never_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap_problem", lambda: "bwrap is not on PATH (simulated)")
    with pytest.raises(ConfigError, match="needs a sandbox.*bubblewrap"):
        python_box()
    # a toolbox built while a sandbox worked, whose sandbox then went away: refused per call
    target = tmp_path / "escaped"
    box = Toolbox([Tool("python", lambda code: __import__("ponder.verifiers.tools", fromlist=["run_cell"]).run_cell(
        code, sandbox.Limits(wall_seconds=3), "auto"))], 4)
    (out,) = run_tools(scripted_engine(escape_script(target)), ["x:"], 1, box, limit=200)
    assert out.calls[0].error and "no sandbox, the code was not run" in out.calls[0].output
    assert not target.exists()


# ------------------------------------------------------------------ the tool corpus (stages/corpus.py)

SHIPPED_CORPUS_SHA256 = "05cde42224a15c8a734cc2404171aeff12c7e833d81e2d8b741acef2678c4934"  # first 5000 docs, seed 0


def corpus_hash(mix, n: int) -> str:
    import hashlib
    import itertools

    from ponder.stages.corpus import documents
    h = hashlib.sha256()
    for d in itertools.islice(documents(mix, 0), n):
        h.update(d.encode() + b"\0")
    return h.hexdigest()


def test_the_shipped_corpus_is_unchanged_bit_for_bit():
    from ponder.stages.corpus import CorpusMix
    assert corpus_hash(CorpusMix(), 5000) == SHIPPED_CORPUS_SHA256
    assert corpus_hash(CorpusMix(p_calc=0.0), 5000) == SHIPPED_CORPUS_SHA256
    assert corpus_hash(CorpusMix(p_calc=0.3), 5000) != SHIPPED_CORPUS_SHA256


def test_calc_documents_are_correct_and_their_style_ignores_the_problem():
    import itertools

    from ponder.stages.corpus import CorpusMix, documents
    docs = list(itertools.islice(documents(CorpusMix(p_calc=0.3, max_digits=7), 1), 3000))
    box = calc_box()
    calls = {1: [], 7: []}
    for d in docs:
        prompt, completion = d.split("\n", 1)
        expr = prompt.removesuffix("=?")
        digits = len(expr.split("*")[0].split("+")[0])
        if "<calc>" in completion:
            tag, arg = box.find_call(completion.split("<output>")[0])
            assert (tag, arg) == ("calc", expr)
            out = completion.split("<output>")[1].split("</output>")[0]
            assert out == calculate(expr) == str(eval(expr, {})) == completion.split("</think>")[1]
        if digits in calls:
            calls[digits].append("<calc>" in completion)
    shares = {k: sum(v) / len(v) for k, v in calls.items()}
    assert all(0.2 < s < 0.4 for s in shares.values()), shares  # ~0.3 at every length


# ------------------------------------------------------------------ wired into `ponder eval` and `ponder train`


def arithmetic_scripts(examples, bad: int | None = None) -> dict[str, str]:
    """Per prompt: a calculator call on the problem (a malformed one for example `bad`), a sampled
    letter, then the gold answer -- so a pass without tools shows no output and no calls."""
    out = {}
    for k, ex in enumerate(examples):
        expr = ex.prompt.split("=")[0] if k != bad else "1+"
        out[ex.prompt] = f"<think><calc>{expr}</calc>[ab]</think>{ex.answer}"
    return out


def test_eval_with_tools_runs_the_calls_the_model_writes():
    from ponder.inference.evaluate import EvalConfig, evaluate
    from ponder.tasks.spec import formatted, make_task

    tok = build_char_tokenizer()
    cfg = EvalConfig(problems=4, samples=2, max_new_tokens=100, tools="calculator", chunk=3)
    task = make_task(cfg)
    examples = formatted(task, tok, cfg).examples("test", 4, seed=cfg.seed)
    model = ScriptedLM(tok, arithmetic_scripts(examples, bad=1))
    result = evaluate(model, tok, task, cfg)
    rows, s = result["samples"], result["summary"]
    for k, (ex, row) in enumerate(zip(examples, rows)):
        expr = ex.prompt.split("=")[0]
        if k == 1:
            assert "<calc>1+</calc><output>error: calculator: cannot parse '1+'</output>" in row["completion"]
            assert (row["tool_calls"], row["tool_errors"]) == (1, 1)
        else:
            assert f"<calc>{expr}</calc><output>{ex.answer}</output>" in row["completion"], row["completion"]
            assert row["calls"] == [{"tool": "calc", "argument": expr, "output": ex.answer, "error": False}]
        assert row["correct"] and row["tool_tokens"] == len(f"<output>{row['calls'][0]['output']}</output>")
    assert (s["tool_calls"], s["tool_errors"], s["tool_error_frac"]) == (1.0, 0.25, 0.25)
    assert s["tool_seconds"] >= 0 and s["accuracy"] == 1.0
    assert set(s["tool_calls_by_difficulty"].values()) == {1.0}
    assert (s["sampled_tool_calls"], s["sampled_tool_errors"]) == (1.0, 0.25)  # the sampled pass calls too
    assert s["generated_tokens"] == sum(len(r["completion"]) - r["tool_tokens"] - 12 for r in rows)  # model's only
    from ponder.inference.evaluate import format_summary
    assert "tools: 1.00 calls, 0.25 failed" in format_summary(result)


def test_tools_off_is_the_plain_path_and_on_changes_nothing_without_calls(tiny):
    """No tools: plain groups, no tool field anywhere (today's eval and RL step). Tools on with a
    model that writes no call: the same completions and numbers, plus the tool counts (all 0)."""
    from ponder.inference.evaluate import EvalConfig, evaluate
    from ponder.rl.train import RLConfig, sample_groups
    from ponder.tasks.spec import make_task

    model, tok = tiny
    kw = dict(problems=5, samples=2, max_new_tokens=16)
    off = evaluate(model, tok, make_task(EvalConfig(**kw)), EvalConfig(**kw))
    on = evaluate(model, tok, make_task(EvalConfig(**kw)), EvalConfig(**kw, tools="calculator"))
    assert not [k for k in off["summary"] if "tool" in k] and not [k for r in off["samples"] for k in r if "tool" in k]
    assert on["summary"]["tool_calls"] == 0 and on["summary"]["sampled_tool_calls"] == 0
    plain = lambda d: {k: v for k, v in d.items() if "tool" not in k and k not in ("tokens_per_s", "calls")}
    assert [plain(r) for r in on["samples"]] == off["samples"]
    assert plain(on["summary"]) == plain(off["summary"])

    rl = dict(prompts_per_step=3, group_size=2, max_new_tokens=16, progress=False)
    task = make_task(RLConfig(**rl), tok)
    e = Engine(model, tok)
    rolled_off = sample_groups(e, task, RLConfig(**rl), 0)
    cfg_on = RLConfig(**rl, tools="calculator")
    rolled_on = sample_groups(e, task, cfg_on, 0, toolbox=Toolbox.from_fields(cfg_on))
    assert not any(isinstance(g, ToolGroup) for g in rolled_off.groups)
    assert not [k for k in rolled_off.metrics if "tool" in k]
    assert all(isinstance(g, ToolGroup) for g in rolled_on.groups) and rolled_on.metrics["tool_calls"] == 0
    assert [s.ids for g in rolled_on.groups for s in g.samples] == [s.ids for g in rolled_off.groups for s in g.samples]


@pytest.mark.parametrize("cost", [0.0, 0.25])
def test_an_rl_step_with_tools_masks_the_tool_tokens_and_logs_the_calls(tmp_path, monkeypatch, cost):
    """`ponder train --tools calculator` for one step: the rollouts (a scripted sampler) call the
    calculator, the update's completion mask is 0 on exactly the tokens the tool wrote, and
    metrics.jsonl counts the calls. With `tool_call_cost` each correct completion's one call
    costs that much of its reward."""
    from ponder.models.model import load_tokenizer
    from ponder.rl import train as T
    from ponder.tasks.spec import make_task

    cfg = T.RLConfig(out=str(tmp_path / "run"), steps=1, prompts_per_step=2, group_size=2, max_new_tokens=60,
                     tools="calculator", progress=False, tensorboard=False, track_kl=False, threads=1,
                     tool_call_cost=cost)
    tok = load_tokenizer(cfg.model)
    examples = T.step_examples(make_task(cfg, tok), cfg, 0, 0)
    scripts = arithmetic_scripts(examples)
    monkeypatch.setattr(T, "Engine", lambda model, tok: Engine(ScriptedLM(tok, scripts), tok, fast=False))
    seen = []
    real_build = T.build_batch
    monkeypatch.setattr(T, "build_batch", lambda rolled, *a: seen.append((rolled, real_build(rolled, *a))) or seen[-1][1])
    T.train(cfg)
    ((rolled, batch),) = seen
    assert all(isinstance(g, ToolGroup) for g in rolled.groups)  # the rollouts ran with the tools
    assert [r.tolist() for r in rolled.rewards] == [[1.0 - cost] * 2] * 2  # correct, one call each
    rows = [(s, m) for g in rolled.groups for s, m in zip(g.samples, g.loss_masks)]
    assert len(rows) == 4
    for b, (s, mask) in enumerate(rows):
        start = len(s.prompt_ids) - 1
        answer = examples[b // 2].answer
        assert f"</calc><output>{answer}</output>" in s.text
        tool_positions = [start + t for t, m in enumerate(mask) if m == 0]
        assert tok.decode(batch.ids[b, [p + 1 for p in tool_positions]].tolist()) == f"<output>{answer}</output>"
        assert all(batch.comp[b, p] == 0 for p in tool_positions)
        assert batch.comp[b].sum().item() == len(s.ids) - len(tool_positions)  # every model token still trains
    (m,) = metrics(tmp_path / "run")
    assert m["tool_calls"] == 1.0 and m["tool_errors"] == 0.0 and m["tool_tokens"] > 0
    assert "tool_seconds" in m


def test_tool_settings_come_from_flags_and_recipes_and_a_bad_name_is_one_line(tmp_path, capsys):
    import argparse

    from ponder import cli
    from ponder.core import config as C
    from ponder.inference.evaluate import EvalConfig
    from ponder.rl.train import RLConfig

    ap = argparse.ArgumentParser()
    C.add_arguments(ap, EvalConfig)
    assert C.from_args(EvalConfig, ap.parse_args(["--tools", "calculator", "--max-tool-calls", "2"])).max_tool_calls == 2
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\ntools = "calculator"\n[eval]\ntools = "calculator,python"\ntool_sandbox = "unsafe-subprocess"\n')
    assert C.build(RLConfig, C.load_toml(recipe, section="train")).tools == "calculator"
    assert C.from_args(EvalConfig, ap.parse_args([]), str(recipe), section="eval").tools == "calculator,python"
    for verb in ("eval", "train"):
        assert cli.main([verb, "--tools", "calculator,calculater", "--out", str(tmp_path / verb)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "'calculater'" in err and "calculator, python" in err, err
        assert err.startswith(f"ponder {verb}: unknown tool")
    with pytest.raises(ConfigError, match="not supported yet with rollout_workers >= 1 or advantage = 'gae'"):
        RLConfig(tools="calculator", advantage="gae")


def test_tool_rollouts_do_not_depend_on_the_chunk_size():
    e = scripted_engine(SCRIPTS)
    task = SimpleNamespace(verify=lambda text, ex: correct(""))
    examples = [Example(id=p, prompt=p, answer="") for p in SCRIPTS]
    params = SamplingParams(max_new_tokens=100)
    runs = [rollout_with_tools(e, task, examples, 2, params, 5, calc_box(), chunk=c) for c in (0, 1, 3)]
    ids = [[s.ids for g in r.groups for s in g.samples] for r in runs]
    assert ids[0] == ids[1] == ids[2] and len(set(map(tuple, ids[0]))) > 4  # sampled rows, not all alike
    assert runs[0].generated_tokens == runs[1].generated_tokens


def test_tool_call_cost_falls_on_correct_completions_only_and_needs_tools():
    """A correct answer by hand keeps its whole reward, one from two calls loses twice the cost, and a
    wrong one loses nothing; a plain group (no tools) is untouched; the option without tools is refused."""
    from ponder.engine.engine import Sample
    from ponder.rl.train import RLConfig, group_rewards
    from ponder.rl.rollout import Group
    from ponder.verifiers.tools import ToolResult

    call = ToolResult("calc", "1+1", "2", False, 0.0)
    samples = tuple(Sample(0, j, (1,), (2,), "x", "eos", 0, 1) for j in range(3))
    verdicts = (correct(), correct(), wrong("3"))
    group = ToolGroup(Example("t0", "1+1=", "2"), samples, verdicts, (1.0, 1.0, 0.0),
                      loss_masks=((1,),) * 3, calls=((), (call, call), (call,)))
    assert group_rewards(group, 0.0, 0.1).tolist() == pytest.approx([1.0, 0.8, 0.0])
    assert group_rewards(group, 0.0).tolist() == [1.0, 1.0, 0.0]
    plain = Group(Example("t0", "1+1=", "2"), samples, verdicts, (1.0, 1.0, 0.0))
    assert group_rewards(plain, 0.0, 0.1).tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="tool_call_cost = 0.1 needs tools"):
        RLConfig(tool_call_cost=0.1)


def test_the_shipped_tool_base_sometimes_calls_and_the_recipe_trains_it():
    """`tiny-tools` is the quickstart's model pretrained with a fifth of the corpus calling the
    calculator: sampled, it calls on some completions and works by hand on others, and each call
    it makes is well formed. recipes/tools_arith.toml trains it with the calculator and a call cost."""
    import argparse

    from ponder.core import config as C
    from ponder.engine.engine import Engine
    from ponder.models.model import load_model
    from ponder.rl.train import RLConfig
    from ponder.tasks import build_task

    model, tok = load_model("tiny-tools")
    task = build_task("arithmetic", "min_digits=1 max_digits=4 ops=add,mul")
    out = rollout_with_tools(Engine(model, tok), task, task.examples("test", 16, seed=0), 4,
                             SamplingParams(max_new_tokens=64, temperature=1.0), seed=0, toolbox=calc_box(2))
    calls = [c for g in out.groups for cs in g.calls for c in cs]
    share = sum(bool(cs) for g in out.groups for cs in g.calls) / 64
    assert 0.05 <= share <= 0.5, share  # about p_calc = 0.2
    assert calls and not any(c.error for c in calls)
    ap = argparse.ArgumentParser()
    C.add_arguments(ap, RLConfig)
    recipe = Path(__file__).parent.parent / "recipes" / "tools_arith.toml"
    cfg = C.from_args(RLConfig, ap.parse_args([]), str(recipe), section="train")
    assert (cfg.model, cfg.tools, cfg.tool_call_cost) == ("tiny-tools", "calculator", 0.1)
