"""`ponder sft` / `ponder distill`: supervised fine-tuning on (prompt, completion) traces.

One loop serves three stages of the R1 recipe:

- cold start: a few clean reasoning traces before RL;
- rejection-sampling SFT: the verifier-accepted samples of `ponder collect`;
- distillation: a smaller student, fresh (`student = "hidden_size=64 layers=3 heads=4"`) or a small base,
  on a teacher's accepted traces ("long2short" when those are the shortest
  correct ones: `ponder collect --keep shortest`).

The loss is next-token cross-entropy on the completion tokens only (the
prompt is context, not a target), averaged over the batch's completion
tokens. Training is exact under resume: the order of the data is a pure
function of (seed, epoch), the step fixes the position in it, and a
checkpoint holds weights, optimizer, scheduler and RNG states.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.core import checkpoint as ckpt
from ponder.core.lock import run_lock
from ponder.core import config as C
from ponder.core.think import THINK_CLOSE, THINK_OPEN
from ponder.tasks.chat import ChatTask
from ponder.tasks.spec import TaskFields, make_task, parse_task_options
from ponder.core.config import RunFields, ConfigError, check_choices, option
from ponder.core.device import of as device_of, resolve as resolve_device
from ponder.models.model import TinyModelConfig, count_params, load_model, new_tiny, save_model
from ponder.core.io import read_jsonl, sha256_file
from ponder.core.loop import TrainingLoop
from ponder.rl.train import PRECISIONS, autocast, body_and_head
from ponder.verifiers.tools import OUTPUT_CLOSE, OUTPUT_OPEN, ToolFields


@dataclass(frozen=True)
class SFTConfig(ToolFields, RunFields, TaskFields):
    """An SFT run. Its tool fields do not change the training (a trace's tool outputs are in
    its text, and carry no loss); they name the tools the traces call, so that a pipeline's
    held-out evaluation of the model runs them."""
    data: str = option("", "JSONL trace file(s), comma-separated; each line has 'prompt' and 'completion'")
    gold: int = option(0, "also train on the gold answers of this many train examples of the task, prompts "
                       "in the task's format (SFT on labelled data: a cold start before RL)")
    model: str = option("tiny", "HF model folder to fine-tune ('tiny' = the built-in base); ignored with `student`")
    student: str = option("", "build a fresh tiny student instead, e.g. 'hidden_size=64 layers=2 heads=2 mlp_ratio=3'")
    out: str = option("runs/sft", "run directory: metrics, checkpoints, final model")
    epochs: int = option(3, "passes over the traces")
    batch_size: int = option(32, "traces per step (the last batch of an epoch may be smaller)")
    micro_batch: int = option(0, "rows per forward/backward chunk, gradients accumulate (0 = the whole batch at "
                              "once): bounds memory at the same step, up to float rounding")
    lr: float = option(1e-3, "peak AdamW learning rate")
    warmup: int = option(10, "linear warm-up steps")
    min_lr_ratio: float = option(0.1, "cosine decay ends at lr * min_lr_ratio")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "max gradient norm")
    save_every: int = option(50, "checkpoint every N steps (and at the end)")
    tensorboard: bool = option(False, "also write TensorBoard event files")
    progress: bool = option(True, "show a progress bar")
    precision: str = option("fp32", "matmul precision of the forward/backward: fp32, or bf16 autocast (weights, "
                            "gradients and optimizer stay fp32; faster on CPUs with bf16 units)", choices=PRECISIONS)

    def __post_init__(self):
        check_choices(self)
        ToolFields.__post_init__(self)
        if self.micro_batch < 0:
            raise ConfigError(f"SFTConfig.micro_batch must be >= 0 (0 = the whole batch), got {self.micro_batch}")
        if self.gold < 0:
            raise ConfigError(f"SFTConfig.gold must be >= 0 (0 = trace files only), got {self.gold}")
        for name in ("epochs", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SFTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not (0 <= self.min_lr_ratio <= 1) or self.warmup < 0:
            raise ConfigError(f"need lr > 0, 0 <= min_lr_ratio <= 1, warmup >= 0; "
                              f"got {self.lr}, {self.min_lr_ratio}, {self.warmup}")
        if self.student:
            student_config(self.student)  # fail now, not after loading the data


class TraceFileError(ValueError):
    """A trace file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Trace:
    prompt: str
    completion: str
    source: str  # "file:line", for error messages and provenance


# -- data ----------------------------------------------------------------------------------
def read_traces(path: str | Path) -> list[Trace]:
    """Every line of a JSONL trace file, or TraceFileError naming the file and the first bad line.

    A truncated file (a write that was killed) shows up as a last line that is not valid JSON.
    """
    out = []
    for where, row in read_jsonl(path, "trace file", error=TraceFileError):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) \
                or not isinstance(row.get("completion"), str):
            raise TraceFileError(f"{where}: expected an object with string fields 'prompt' and 'completion'")
        out.append(Trace(row["prompt"], row["completion"], where))
    if not out:
        raise TraceFileError(f"trace file {str(path)!r} holds no traces")
    return out


def data_files(spec: str, gold: int = 0) -> list[Path]:
    files = [Path(s.strip()) for s in spec.split(",") if s.strip()]
    if not files and not gold:
        raise ConfigError("SFTConfig.data is empty; give one or more JSONL trace files (comma-separated), "
                          "or gold = N to train on N of the task's gold answers")
    return files


def gold_traces(cfg: SFTConfig, tok) -> list[Trace]:
    """`cfg.gold` train examples of the task with their gold answers as completions, prompts
    formatted exactly as RL and eval format them. A raw-format task reads its answer after
    `</think>`, so the completion is an empty thinking block and the answer."""
    task = make_task(cfg, tok)
    examples = task.examples("train", cfg.gold, seed=cfg.seed)
    if len(examples) < cfg.gold:
        raise ConfigError(f"SFTConfig.gold = {cfg.gold}, but the task {task.name!r} has only "
                          f"{len(examples)} train examples")
    raw = not isinstance(task, ChatTask)
    return [Trace(ex.prompt, ex.solution or (f"{THINK_OPEN}{THINK_CLOSE}{ex.answer}" if raw else ex.answer),
                  f"{task.name}:{ex.id}") for ex in examples]


_TOOL_OUTPUT = re.compile(f"({re.escape(OUTPUT_OPEN)}.*?{re.escape(OUTPUT_CLOSE)})", re.DOTALL)


def completion_segments(completion: str) -> list[tuple[str, bool]]:
    """(text, is tool output) pieces of a completion: a tool's `<output>…</output>` is
    written by the tool, not the model, so it carries no loss.

    >>> completion_segments("<calc>2+3</calc><output>5</output> so 5")
    [('<calc>2+3</calc>', False), ('<output>5</output>', True), (' so 5', False)]
    """
    return [(part, i % 2 == 1) for i, part in enumerate(_TOOL_OUTPUT.split(completion)) if part]


def encode_trace(tok, t: Trace) -> tuple[list[int], ...]:
    """(prompt ids, completion ids + EOS), tokenized as the engine sees them: the prompt with
    the tokenizer's specials (BOS), the completion without. A completion holding tool
    outputs gets a third list, its loss mask (0 on a tool's tokens): each piece is
    tokenized on its own, as the tool rollout appends a call's output to the row."""
    try:
        prompt = tok(t.prompt)["input_ids"]
        pieces = completion_segments(t.completion)
        ids = [tok(text, add_special_tokens=False)["input_ids"] for text, _ in pieces]
    except Exception as e:  # `tokenizers` raises a plain Exception for text it cannot encode
        raise TraceFileError(f"{t.source}: the model's tokenizer cannot encode this trace ({e})") from None
    completion = [i for part in ids for i in part] + [tok.eos_token_id]
    if not any(tool for _, tool in pieces):
        return prompt, completion
    mask = [0 if tool else 1 for part, (_, tool) in zip(ids, pieces) for _ in part] + [1]
    return prompt, completion, mask


def target_count(row: tuple[list[int], ...]) -> int:
    """Completion tokens of an encoded trace that carry loss (a tool's tokens do not)."""
    return sum(row[2]) if len(row) > 2 else len(row[1])


def collate(rows: list[tuple[list[int], ...]], pad_id: int):
    """Right-padded (ids, attention_mask, labels), each (B, L); labels are -100 except on
    completion tokens (and not on a tool's output, see `encode_trace`), so the loss ignores
    the prompt, the padding and what tools wrote."""
    L = max(len(r[0]) + len(r[1]) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), L), dtype=torch.long)
    labels = torch.full((len(rows), L), -100, dtype=torch.long)
    for i, (p, c, *mask) in enumerate(rows):
        seq = torch.tensor(p + c)
        ids[i, : len(seq)] = seq
        attn[i, : len(seq)] = 1
        target = torch.tensor(c)
        if mask:
            target[torch.tensor(mask[0]) == 0] = -100
        labels[i, len(p): len(seq)] = target
    return ids, attn, labels


def sft_loss(model, ids: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch's completion tokens (token-level, not per sequence).

    On a Llama-family model the LM head runs on the completion positions only: over a 50k
    vocabulary the head and its log-softmax cost as much as a dozen layers, and prompt and
    padding positions never enter the loss (same loss, up to float rounding)."""
    dev = device_of(model)
    ids, attn, labels = ids.to(dev), attn.to(dev), labels.to(dev)
    target = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    parts = body_and_head(model)
    if parts is None:
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (B, L-1, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)
    body, head = parts
    sel = target != -100
    hidden = body(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]  # (B, L-1, D)
    return F.cross_entropy(head(hidden[sel]).float(), target[sel])


def backward_batch(model, rows: list[tuple[list[int], ...]], pad_id: int, micro_batch: int,
                   precision: str) -> torch.Tensor:
    """Forward and backward the batch's mean completion-token loss; returns the loss (detached).

    With `micro_batch` rows per chunk, each chunk's mean is weighted by its share of the
    batch's completion tokens, so the accumulated gradient is the whole batch's (up to float
    rounding) while only one chunk's activations are alive; a chunk is padded to its own
    longest row, not the batch's."""
    if micro_batch <= 0 or micro_batch >= len(rows):
        with autocast(precision):
            loss = sft_loss(model, *collate(rows, pad_id))
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach()
    chunks = [rows[i:i + micro_batch] for i in range(0, len(rows), micro_batch)]
    total = sum(target_count(r) for r in rows)
    loss = torch.zeros(())
    for chunk in chunks:
        with autocast(precision):
            part = sft_loss(model, *collate(chunk, pad_id)) * (sum(target_count(r) for r in chunk) / total)
        if not torch.isfinite(part):
            return part.detach()
        part.backward()
        loss = loss + part.detach().float().cpu()
    return loss


def steps_per_epoch(n_traces: int, batch_size: int) -> int:
    return math.ceil(n_traces / batch_size)


def epoch_order(n_traces: int, seed: int, epoch: int) -> list[int]:
    """The permutation of the traces used in `epoch` (its own generator: independent of global RNG)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_traces, generator=g).tolist()


def batch_indices(n_traces: int, cfg: SFTConfig, step: int) -> list[int]:
    """Which traces step `step` trains on.

    >>> cfg = SFTConfig(data="x", batch_size=4)
    >>> len(batch_indices(10, cfg, 2)), sorted(sum((batch_indices(10, cfg, s) for s in range(3)), []))
    (2, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    spe = steps_per_epoch(n_traces, cfg.batch_size)
    epoch, pos = divmod(step, spe)
    order = epoch_order(n_traces, cfg.seed, epoch)
    return order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup - 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


# -- model ------------------------------------------------------------------------------------
def student_config(spec: str) -> TinyModelConfig:
    """'hidden_size=64 layers=2' -> TinyModelConfig (unnamed fields keep their defaults)."""
    return C.build(TinyModelConfig, parse_task_options(spec))


def initial_model(cfg: SFTConfig):
    """(model, tokenizer, description of where the weights come from)."""
    if cfg.student:
        model, tok = new_tiny(student_config(cfg.student), seed=cfg.seed)
        return model.to(resolve_device(cfg.device)), tok, f"fresh student ({cfg.student}, seed {cfg.seed})"
    model, tok = load_model(cfg.model, device=cfg.device)
    return model, tok, cfg.model


def make_optimizer(model, cfg: SFTConfig, total: int):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, cfg.warmup, cfg.min_lr_ratio))
    return opt, sched


# -- the run ------------------------------------------------------------------------------------
def _load_checkpoint(path: Path, hashes: dict) -> tuple[dict, tuple]:
    """(trainer state, (model, tokenizer)) of one checkpoint, or ConfigError if its data differ."""
    state = ckpt.load_state(path)
    if state["data"]["sha256"] != hashes:
        raise ConfigError(f"--resume: the trace files changed since {path}: "
                          f"checkpoint has {state['data']['sha256']}, now {hashes}")
    return state, load_model(path)


def sft(cfg: SFTConfig, resume: bool = False, log_prefix: str = "") -> Path:
    """Fine-tune on `cfg.data`; returns OUT/model. Resumes exactly from OUT/checkpoints."""
    with run_lock(cfg.out):  # one writer per run folder: a second run on it is refused, naming this pid
        return _sft(cfg, resume, log_prefix)


def _sft(cfg: SFTConfig, resume: bool, log_prefix: str) -> Path:
    C.set_threads(cfg.threads)
    out = Path(cfg.out)
    files = data_files(cfg.data, cfg.gold)
    traces = [t for f in files for t in read_traces(f)]  # fails before anything is written
    hashes = {str(f): sha256_file(f) for f in files}
    model, tok, origin = initial_model(cfg)
    if cfg.gold:
        gold = gold_traces(cfg, tok)
        traces += gold
        hashes["gold"] = hashlib.sha256(json.dumps([[t.prompt, t.completion] for t in gold]).encode()).hexdigest()
    encoded = [encode_trace(tok, t) for t in traces]
    spe = steps_per_epoch(len(traces), cfg.batch_size)
    total = cfg.epochs * spe
    opt, sched = make_optimizer(model, cfg, total)
    ck_root = out / "checkpoints"
    start = 0
    if resume:
        # the newest checkpoint that loads; a damaged one is skipped, saying which file
        last, (state, (model, tok)) = ckpt.load_latest(ck_root, lambda p: _load_checkpoint(p, hashes),
                                                       say=lambda line: print(log_prefix + line))
        model = model.to(resolve_device(cfg.device))
        opt, sched = make_optimizer(model, cfg, total)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        start = state["step"]
        print(f"{log_prefix}resuming from {last.name} (step {start} of {total}, "
              f"epoch {start // spe + 1}, batch {start % spe} of {spe})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {**asdict(cfg), "data_sha256": hashes, "init": origin, "traces": len(traces),
         "steps_per_epoch": spe, "total_steps": total, "params": count_params(model)}, indent=1))
    hint = f"Resume with: ponder sft --resume --out {out} (same recipe/flags)"
    with TrainingLoop(out, total, start, f"{log_prefix}SFT", cfg.progress, cfg.tensorboard, cfg.save_every,
                      hint, resume=resume) as loop:
        for step in loop:
            t0 = time.perf_counter()
            model.train()
            rows = [encoded[i] for i in batch_indices(len(traces), cfg, step)]
            opt.zero_grad(set_to_none=True)
            loss = backward_batch(model, rows, tok.pad_token_id, cfg.micro_batch, cfg.precision)
            if not torch.isfinite(loss):
                last = ckpt.latest(ck_root)
                raise FloatingPointError(f"non-finite SFT loss at step {step}; stopped. "
                                         f"Last good checkpoint: {last or 'none'}")
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            done = step + 1
            metrics = {"loss": loss.item(), "grad_norm": gn.item(), "lr": lr, "epoch": step // spe,
                       "tokens": sum(target_count(r) for r in rows), "step_time": time.perf_counter() - t0}
            if loop.end_step(done, metrics, loss=f"{loss.item():.4f}"):
                ckpt.save(ck_root, done, model, tok, {
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "config": asdict(cfg),
                    "data": {"sha256": hashes, "epoch": done // spe, "position": done % spe}})
            loop.stop_if_asked(done)
    model.eval()
    return save_model(model, tok, out / "model")


# -- command line -------------------------------------------------------------------------------
def config_from_argv(argv: list[str], prog: str, description: str) -> tuple[SFTConfig, bool]:
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", help="TOML recipe with SFTConfig keys (top level or [sft])")
    ap.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    C.add_arguments(ap, SFTConfig)
    args = ap.parse_args(argv)
    values = C.load_toml(args.recipe, "sft", known=SFTConfig.__dataclass_fields__) if args.recipe else {}
    values.pop("kind", None)  # `ponder train` dispatches on it; it is not an SFT setting
    values.update({k: v for k, v in vars(args).items() if k in SFTConfig.__dataclass_fields__ and v is not None})
    return C.build(SFTConfig, values), args.resume


def _run(cfg: SFTConfig, resume: bool) -> int:
    try:
        path = sft(cfg, resume=resume)
    except KeyboardInterrupt:
        return 130
    except TraceFileError as e:
        print(f"ponder sft: {e}", file=sys.stderr)
        return 1
    print(f"fine-tuned model: {path}")
    return 0


def main(argv: list[str]) -> int:
    cfg, resume = config_from_argv(argv, "ponder sft", __doc__)
    return _run(cfg, resume)


def distill_main(argv: list[str]) -> int:
    """`ponder distill`: SFT of a smaller student on a teacher's traces."""
    cfg, resume = config_from_argv(argv, "ponder distill", distill_main.__doc__ + (
        "\n\nThe student is fresh (--student 'hidden_size=64 layers=3 heads=4') or a small base from "
        "`ponder pretrain --hidden-size 64 ...` (--model FOLDER). Get the traces with "
        "`ponder collect --model TEACHER` (add `--keep shortest` for long2short) and pass them as --data."))
    if not cfg.student and cfg.model in ("tiny", "builtin", "tiny-base"):
        raise ConfigError("ponder distill needs a student smaller than the built-in base: --student "
                          "'hidden_size=64 layers=3 heads=4' (fresh) or --model SMALL_BASE_FOLDER")
    return _run(cfg, resume)
