"""The invoice task: generator (determinism, layout split, arithmetic, coverage), its grader,
the `make-data` verb, and a pipeline that generates its own data."""

import json
import random
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from ponder.cli import main as cli
from ponder.core.config import ConfigError
from ponder.tasks import invoices as inv
from ponder.tasks.chat import ChatTask
from ponder.tasks.jsonl import JsonlTask
from ponder.tasks.spec import TemplatedTask
from ponder.tasks.probe import probe_task
from ponder.verifiers.tools import calculate

REPO = Path(__file__).resolve().parent.parent
GRADER = REPO / "recipes" / "invoice_grader.toml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("invoices")
    inv.write_invoices(out, train=120, test=60, seed=3)
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- generator --------------------------------------------------------------------------------------
def test_examples_are_a_pure_function_of_seed_split_and_index(tmp_path):
    assert inv.example(1, "train", 7) == inv.example(1, "train", 7)
    assert inv.example(1, "train", 7)["prompt"] != inv.example(2, "train", 7)["prompt"]
    inv.write_invoices(tmp_path / "a", 30, 12, seed=5)
    inv.write_invoices(tmp_path / "b", 30, 12, seed=5)
    for name in ("train.jsonl", "test.jsonl", "all.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_split_by_layout_and_no_shared_document(data):
    train, test = rows(data / "train.jsonl"), rows(data / "test.jsonl")
    assert {r["layout"] for r in train} == set(inv.TRAIN_LAYOUTS)
    assert {r["layout"] for r in test} == set(inv.HELD_OUT_LAYOUTS)
    assert not set(inv.TRAIN_LAYOUTS) & set(inv.HELD_OUT_LAYOUTS)
    assert {r["layout_group"] for r in test} == {"held_out"} and {r["layout_group"] for r in train} == {"seen"}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len({r["prompt"] for r in train}) == len(train)
    # the task file keeps the split: training draws only seen layouts, evaluation only held-out ones
    task = JsonlTask(data / "all.jsonl", str(GRADER))
    assert {ex.info["layout"] for ex in task.examples("train", 500)} == set(inv.TRAIN_LAYOUTS)
    assert {ex.info["layout"] for ex in task.examples("test", 500)} == set(inv.HELD_OUT_LAYOUTS)


def test_every_layout_number_format_and_amount_kind_is_rendered(data):
    both = rows(data / "all.jsonl")
    assert {r["layout"] for r in both} == set(inv.LAYOUTS)
    for split in ("train", "test"):
        mine = [r for r in both if r["split"] == split]
        assert {r["number_format"] for r in mine} == set(inv.NUMBER_FORMATS)
        assert {r["amounts"] for r in mine} == {"printed", "computed"}
    currencies = {r["answer"]["currency"] for r in both}
    assert {"USD", "EUR", "GBP"} <= currencies and all(len(c) == 3 for c in currencies)


def test_gold_matches_the_schema_and_the_document(data):
    import jsonschema

    for r in rows(data / "all.jsonl"):
        jsonschema.validate(r["answer"], inv.SCHEMA)
        gold = r["answer"]
        assert gold["invoice_number"] in r["prompt"]
        assert gold["vendor"].casefold() in r["prompt"].casefold()
        if r["amounts"] == "printed":  # a printed total appears in the document's own number format
            assert inv.format_number(Decimal(str(gold["total"])), r["number_format"]) in r["prompt"]


def test_amounts_add_up_to_the_cent_and_hidden_ones_are_not_printed():
    rng = random.Random(0)
    hidden_total = 0
    for i in range(400):
        layout = inv.LAYOUTS[i % len(inv.LAYOUTS)]
        x = inv.make_invoice(rng, layout, computed_share=0.5)
        assert x.subtotal == sum(it.amount for it in x.items)
        assert x.subtotal + x.tax == x.total
        assert x.tax == (x.subtotal * x.tax_rate / 100).quantize(inv.CENT, ROUND_HALF_UP)
        assert all(it.amount == (it.qty * it.unit).quantize(inv.CENT, ROUND_HALF_UP) for it in x.items)
        g = x.gold()
        assert round(g["subtotal"] + g["tax"], 2) == g["total"]
        if x.hidden:
            assert x.tax_rate > 0  # else nothing is left to compute
        if "total" in x.hidden and layout in ("letterhead", "keyvalue", "table", "erp", "letter", "email") \
                and not x.previous_balance:
            hidden_total += 1
            assert inv.format_number(x.total, x.number_format) not in inv.RENDER[layout](x, random.Random(i))
    assert hidden_total > 10


def test_number_formats():
    x = Decimal("1234.5")
    assert [inv.format_number(x, f) for f in inv.NUMBER_FORMATS] == ["1,234.50", "1.234,50", "1 234,50"]
    with pytest.raises(ConfigError, match="'xx'.*us, eu, space"):
        inv.format_number(x, "xx")
    with pytest.raises(ConfigError, match="layout 'fax' is not valid"):
        inv.make_invoice(random.Random(0), "fax")


# -- grader -----------------------------------------------------------------------------------------
class ChatTok:
    """A tokenizer with a chat template, enough for ChatTask (no model needed)."""
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


@pytest.fixture(scope="module")
def task(data):
    """The task as a recipe builds it: file + grader + template, in chat format."""
    return ChatTask(TemplatedTask(JsonlTask(data / "all.jsonl", str(GRADER)), "Extract.\n\n{prompt}"), ChatTok())


def gold_of(ex) -> dict:
    return json.loads(ex.answer)


def test_grader_exact_match_and_field_scores(task):
    ex = task.examples("test", 1)[0]
    gold = gold_of(ex)

    def score(obj, wrap=lambda s: s):
        v = task.verify(wrap(json.dumps(obj)), ex)
        return v.status, round(v.score, 4)

    assert score(gold) == ("correct", 1.0)  # a bare JSON answer, no think tags (an instruct model)
    assert score(gold, lambda s: f"<think>the vendor is on top</think>\n{s}") == ("correct", 1.0)
    assert score(gold, lambda s: f"```json\n{s}\n```") == ("correct", 1.0)
    loose = {**gold, "vendor": "  " + gold["vendor"].upper().replace(" ", "   ") + " ",
             "currency": gold["currency"].lower(), "total": gold["total"] + 0.004}
    assert score(loose) == ("correct", 1.0)  # whitespace, case, and under half a cent
    assert score({**gold, "total": round(gold["total"] + 0.01, 2)}) == ("wrong", round(6 / 7, 4))
    assert score({**gold, "tax": gold["tax"] + 1, "date": "1999-01-01"}) == ("wrong", round(5 / 7, 4))
    # schema violations score nothing: a missing or extra key, a number as text, a bad date
    assert score({k: v for k, v in gold.items() if k != "tax"}) == ("wrong", 0.0)
    assert score({**gold, "customer": "x"}) == ("wrong", 0.0)
    assert score({**gold, "total": str(gold["total"])}) == ("wrong", 0.0)
    assert score({**gold, "date": "01.02.2023"}) == ("wrong", 0.0)
    assert score([gold]) == ("wrong", 0.0)
    assert task.verify(f"Here it is: {json.dumps(gold)}", ex).score == 0.0  # the answer must be the JSON


def test_grader_schema_is_the_generators_schema():
    from ponder.core.config import load_toml

    assert load_toml(GRADER)["grader"]["schema"] == inv.SCHEMA


def test_probes_never_score(task):
    results = probe_task(task, n=3, split="test")
    assert results and not [(r.probe, r.verdict) for r in results if r.verdict.score > 0]
    ex = task.examples("test", 1)[0]
    for copy in (ex.info["document"], ex.prompt, "", "{}", "null"):
        assert task.verify(copy, ex).score == 0.0


# -- verb and pipeline --------------------------------------------------------------------------------
def test_make_data_verb(tmp_path, capsys):
    assert cli(["make-data", "invoices", "--out", str(tmp_path), "--train", "9", "--test", "6", "--seed", "2"]) == 0
    assert "wrote 9 train and 6 test lines" in capsys.readouterr().out
    assert len(rows(tmp_path / "all.jsonl")) == 15
    assert cli(["make-data", "receipts", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'receipts'" in err and "invoices" in err and len(err.strip().splitlines()) == 1


PIPELINE = """
[task]
data = "@data"
grader = "invoice_grader.toml"
format = "raw"
template = "Extract as JSON.\\n{prompt}"

[pipeline]
eval_problems = 3
max_new_tokens = 4
threads = 1
progress = false

[[stage]]
name = "data"
kind = "data"
train = 12
test = 6

[[stage]]
name = "base"
kind = "eval"
model = "tiny"
samples = 1

[[stage]]
name = "sft"
kind = "sft"
model = "tiny"
gold = 4
epochs = 1
batch_size = 2
tensorboard = false
"""


def byte_level_llama(folder: Path) -> str:
    """A 2-layer Llama with a small byte-level BPE tokenizer: it can encode any invoice text
    (the built-in tiny base only knows arithmetic tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([inv.example(0, "train", i)["prompt"] for i in range(6)], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id)
    import torch
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_a_pipeline_generates_its_data_and_trains_on_it(tmp_path):
    from ponder.stages.pipeline import run_pipeline

    (tmp_path / "invoice_grader.toml").write_text(GRADER.read_text())  # found beside the recipe
    recipe = tmp_path / "r.toml"
    model = byte_level_llama(tmp_path / "llama")
    PIPELINE_ = PIPELINE.replace('"tiny"', json.dumps(model))
    recipe.write_text(PIPELINE_)
    out = tmp_path / "run"
    assert run_pipeline(recipe, out) == {"data": "ran", "base": "ran", "sft": "ran"}
    assert {r["split"] for r in rows(out / "data" / "all.jsonl")} == {"train", "test"}
    m = json.loads((out / "sft" / "manifest.json").read_text())
    assert m["inputs"]["task"] == {"path": str(out / "data" / "all.jsonl"),
                                   "sha256": json.loads((out / "data" / "manifest.json").read_text())
                                   ["outputs"][2]["sha256"]}
    summary = json.loads((out / "summary.json").read_text())
    by = {r["stage"]: r for r in summary["stages"]}
    assert by["base"]["accuracy"] == 0.0 and by["base"]["accuracy_ci"][0] == 0.0
    assert set(by["sft"]["by_info"]["layout"]) <= set(inv.HELD_OUT_LAYOUTS)
    assert all(r["minutes"] is not None and r["cpu_minutes"] is not None for r in by.values())
    from ponder.stages.pipeline import lineage
    assert f"task {out / 'data' / 'all.jsonl'} [" in lineage(out)
    assert run_pipeline(recipe, out) == {"data": "skipped", "base": "skipped", "sft": "skipped"}
    # new data makes every stage that reads it stale
    recipe.write_text(PIPELINE_.replace("train = 12", "train = 13"))
    assert run_pipeline(recipe, out) == {"data": "ran", "base": "ran", "sft": "ran"}


def test_a_task_reference_must_name_an_earlier_data_stage(tmp_path):
    from ponder.stages.pipeline import run_pipeline

    recipe = tmp_path / "r.toml"
    recipe.write_text(PIPELINE.replace('data = "@data"', 'data = "@base"'))
    with pytest.raises(ConfigError, match=r"task '@base' must name an earlier data stage; valid: @data"):
        run_pipeline(recipe, tmp_path / "run")


def test_report_counts_exact_match_and_fields_per_slice(tmp_path):
    (tmp_path / "pipeline.json").write_text(json.dumps({"stages": ["data", "m"]}))
    (tmp_path / "m").mkdir()
    samples = [{"correct": True, "score": 1.0, "info": {"layout": "email", "amounts": "printed"}},
               {"correct": False, "score": 3 / 7, "info": {"layout": "ocr", "amounts": "printed"}}]
    (tmp_path / "m" / "eval.json").write_text(json.dumps({"samples": samples}))
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({"seconds": 120, "cpu_seconds": 60}))
    table = inv.report(tmp_path)
    assert "| m (2.0 min wall, 1.0 CPU min) | all | 0.500 [0.09, 0.91] / 0.714 [0.45, 0.88] (n=2) |" in table
    assert "| | layout=ocr | 0.000 [0.00, 0.79] / 0.429 [0.16, 0.75] (n=1) |" in table
    assert "data" not in table  # a stage without an evaluation has no row


def test_distractors_change_training_documents_only_and_add_no_amounts():
    test_plain = inv.examples("test", 9, seed=2)
    assert inv.examples("test", 9, seed=2, distractors=1.0) == test_plain  # test documents never change
    plain = inv.examples("train", 60, seed=2)
    noisy = inv.examples("train", 60, seed=2, distractors=1.0)
    changed = [(a, b) for a, b in zip(plain, noisy) if a["prompt"] != b["prompt"]]
    assert len(changed) > 40
    labels = inv.CONTACTS + inv.OTHER_DATES + ("VAT ID", "Tax ID", "VAT reg. no.")
    for a, b in changed:
        assert a["answer"] == b["answer"]
        extra = [line for line in b["prompt"].splitlines() if line not in a["prompt"].splitlines()]
        assert extra and all(line in inv.TITLES or line.split(":")[0] in labels for line in extra), extra
        for name in ("subtotal", "tax", "total"):  # no amount is added: a hidden one stays hidden
            text = inv.format_number(Decimal(str(a["answer"][name])), a["number_format"])
            assert (text in b["prompt"]) == (text in a["prompt"])
    half = inv.examples("train", 200, seed=2, distractors=0.5)
    share = sum(x["prompt"] != y["prompt"] for x, y in zip(half, inv.examples("train", 200, seed=2))) / 200
    assert 0.35 < share < 0.65
    with pytest.raises(ConfigError, match="distractors"):
        inv.write_invoices("unused", train=1, test=1, distractors=1.5)


def test_documents_do_not_depend_on_the_string_hash_seed():
    import os
    import subprocess
    import sys

    code = ("import json; from ponder.tasks import invoices as inv; "
            "print(json.dumps([r['prompt'] for r in inv.examples('train', 150, seed=0)]))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": h}).stdout for h in ("1", "2")}
    assert len(outs) == 1


def test_rewrites_keep_the_facts_and_leave_test_documents_alone():
    assert inv.examples("test", 9, seed=4, rewrites=1.0) == inv.examples("test", 9, seed=4)
    plain, moved = inv.examples("train", 60, seed=4), inv.examples("train", 60, seed=4, rewrites=1.0)
    changed = [(a, b) for a, b in zip(plain, moved) if a["prompt"] != b["prompt"]]
    assert len(changed) > 10
    phrased = 0
    for a, b in changed:
        assert a["answer"] == b["answer"]
        gold = b["answer"]
        assert gold["vendor"].casefold() in b["prompt"].casefold() and gold["invoice_number"] in b["prompt"]
        phrased += any(line.startswith(("Issued on ", "This invoice is dated ")) or " dated " in line
                       for line in b["prompt"].splitlines())
    assert phrased > 3
    # some name the issuer only at the end, a department's contact line where the name stood
    ended = [b for a, b in changed if a["prompt"].splitlines()[0].strip().casefold() == a["answer"]["vendor"].casefold()
             and b["prompt"].splitlines()[0].split(":")[0] in inv.CONTACTS]
    assert len(ended) >= 2
    for b in ended:
        assert b["prompt"].splitlines()[-1].endswith((b["answer"]["vendor"], f"({b['answer']['vendor']})"))
    with pytest.raises(ConfigError, match="rewrites=2"):
        inv.write_invoices("unused", train=1, test=1, rewrites=2)


# -- worked solutions with the calculator ------------------------------------------------------------
_CALL = re.compile(r"<calc>(.*?)</calc><output>(.*?)</output>")


@pytest.mark.parametrize("hidden", inv.HIDDEN_SETS + ((),))
def test_worked_solution_computes_what_is_missing_and_then_the_total(hidden):
    rng = random.Random(f"solutions/{hidden}")
    x = next(i for i in (inv.make_invoice(rng, "letterhead", 1.0 if hidden else 0.0) for _ in range(400))
             if i.hidden == hidden)
    text = inv.worked_solution(x)
    think, answer = text.split("</think>")
    assert think.startswith("<think>") and json.loads(answer) == x.gold()
    calls = _CALL.findall(think)
    assert "".join(f"<calc>{e}</calc><output>{o}</output>" for e, o in calls) == think[len("<think>"):]
    assert all(calculate(e) == o for e, o in calls)  # every output is the tool's own
    values = [Decimal(o) for _, o in calls]
    missing = [getattr(x, h) for h in ("subtotal", "tax") if h in hidden]
    # a tax from the rate is exact in the output, rounded half up to the cent in the answer;
    # the last call is always subtotal + tax = the total
    assert [v.quantize(Decimal("0.01"), ROUND_HALF_UP) for v in values] == missing + [x.total]
    assert calls[-1][0] == f"{x.subtotal:f}+{x.tax:f}"
    # each call uses only amounts the document prints or earlier outputs (rounded)
    printed = [it.amount for it in x.items] + [getattr(x, a) for a in ("subtotal", "tax", "total") if a not in hidden]
    known = {f"{v:f}" for v in printed + missing} | {f"{x.tax_rate.normalize():f}", "100"}
    for e, _ in calls:
        assert set(re.split(r"[-+*/]", e)) <= known, e


def test_solutions_add_completions_and_keep_the_documents(tmp_path):
    inv.write_invoices(tmp_path / "a", 40, 6, seed=2)
    inv.write_invoices(tmp_path / "b", 40, 6, seed=2, solutions="calculator")
    a = [json.loads(l) for l in (tmp_path / "a" / "all.jsonl").open()]
    b = [json.loads(l) for l in (tmp_path / "b" / "all.jsonl").open()]
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b] and all("completion" not in r for r in a)
    assert all(r["completion"].startswith("<think><calc>") for r in b)
    ex = JsonlTask(tmp_path / "b" / "all.jsonl", str(GRADER)).examples("train", 40)
    assert {e.id: e.solution for e in ex} == {r["id"]: r["completion"] for r in b if r["split"] == "train"}
    assert all("completion" not in e.info for e in ex)  # not a per-line metric label
    with pytest.raises(ConfigError, match="solutions 'python' is not valid; choose one of: none, calculator"):
        inv.write_invoices(tmp_path / "c", 1, 1, solutions="python")


@pytest.mark.parametrize("name", ["invoices.toml", "invoices_calculator.toml"])
def test_the_invoice_recipes_resolve_and_the_calculator_one_runs_the_tool_where_it_trains(name, tmp_path):
    """Both shipped recipes parse into their stages; the calculator recipe writes worked
    solutions and gives the SFT and GRPO stages the calculator (so their evaluations run it)."""
    from ponder.stages.pipeline import load_recipe, resolve, stage_tools
    pc, raw = load_recipe(REPO / "recipes" / name)
    stages = {s.name: s for s in resolve(pc, raw, tmp_path)}
    assert list(stages) == ["data", "rl_data", "zero_shot", "sft", "rl", "sft_rl"]
    calc = name == "invoices_calculator.toml"
    assert stages["data"].config.solutions == ("calculator" if calc else "none")
    for s in ("sft", "sft_rl"):
        assert stage_tools(stages[s])["tools"] == ("calculator" if calc else "")
    assert stages["sft"].config.gold == 1000
