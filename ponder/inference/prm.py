"""`ponder train-prm`: a process reward model as a small value head on the policy's hidden states.

Math-Shepherd's recipe (Wang et al. 2024), scaled down:

1. sample `rollouts` completions per training problem;
2. cut each at its step ends (a step is one line of the thinking; the close
   of the thinking and the finished answer are steps too);
3. label each step prefix by Monte Carlo: from the prefix, sample
   `continuations` completions and take the fraction the verifier accepts
   (the rollout itself counts as one; a finished completion's label is its
   own verdict) — Math-Shepherd's "soft" estimate;
4. fit a two-layer head, by soft binary cross-entropy, on features of the
   frozen model at the prefix's last token: the hidden state of the final
   and the middle layer, plus how confident the model was in what it wrote
   (min and mean log-probability of the completion's tokens, min over the
   last step) — a slip in one digit shows up as a token the model itself
   found unlikely.

Departures from the paper: the head sits on the policy itself (no separate
PRM model is fine-tuned), and labels come from our own task verifiers.
The head is a few thousand parameters, so training takes seconds once the
labels are sampled; sampling them is the cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ponder.core.device import of as device_of

from ponder.core import config as C
from ponder.models.value_head import ValueHead  # noqa: F401 (part of this module's API)
from ponder.rl.rollout import rollout
from ponder.tasks.spec import TaskFields, make_task
from ponder.core.config import RunFields, ConfigError, check_choices, option
from ponder.engine.engine import Engine, SamplingParams
from ponder.core.think import THINK_CLOSE

HEAD_FILE, META_FILE = "prm_head.pt", "prm.json"


@dataclass(frozen=True)
class PRMConfig(RunFields, TaskFields):
    model: str = option("tiny", "HF model folder whose hidden states the head reads")
    out: str = option("runs/prm", "folder to write the head to")
    problems: int = option(256, "training-split problems to roll out")
    rollouts: int = option(2, "sampled completions per problem, cut into step prefixes")
    continuations: int = option(4, "Monte Carlo completions from each step prefix")
    temperature: float = option(1.0, "sampling temperature of rollouts and continuations")
    max_new_tokens: int = option(128, "completion token limit")
    hidden: int = option(64, "width of the head's hidden layer")
    epochs: int = option(400, "full-batch Adam steps on the head")
    lr: float = option(3e-3, "head learning rate")
    weight_decay: float = option(1e-3, "head weight decay")
    val_share: float = option(0.2, "share of problems held out to report the head's fit")
    chunk: int = option(64, "prefixes per generation batch")

    def __post_init__(self):
        check_choices(self)
        if min(self.problems, self.rollouts, self.continuations, self.epochs, self.chunk) < 1:
            raise ConfigError("problems, rollouts, continuations, epochs and chunk must all be >= 1, got "
                              f"{self.problems}, {self.rollouts}, {self.continuations}, {self.epochs}, {self.chunk}")
        if not 0 <= self.val_share < 1:
            raise ConfigError(f"val_share must be in [0, 1), got {self.val_share}")


# -- steps ----------------------------------------------------------------------------------------
def step_ends(ids: list[int], newline_id: int | None, close_id: int | None, eos_id: int) -> list[int]:
    """Lengths of the step prefixes of a completion: after each thinking line, after `</think>`, and the end.

    A trailing EOS is not part of any prefix. Steps inside the answer are not
    cut: the answer is one step.

    >>> step_ends([3, 5, 9, 6, 9, 4, 7, 2], newline_id=9, close_id=4, eos_id=2)
    [3, 5, 6, 7]
    """
    body = ids[:-1] if ids and ids[-1] == eos_id else ids
    close = body.index(close_id) if close_id in body else len(body)
    ends = [i + 1 for i, t in enumerate(body[:close]) if t == newline_id]
    if close < len(body):
        ends.append(close + 1)
    if body and (not ends or ends[-1] != len(body)):
        ends.append(len(body))
    return ends


def _seed(*parts) -> int:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


# -- the head --------------------------------------------------------------------------------------
def feature_layers(model) -> list[int]:
    """Hidden-state indices the head reads: the middle and the last layer's output."""
    n = model.config.num_hidden_layers
    return [n // 2, n]


N_CONFIDENCE = 3  # min and mean log-prob over the completion, min over its last step


def feature_dim(model) -> int:
    return model.config.hidden_size * len(feature_layers(model)) + N_CONFIDENCE


@torch.no_grad()
def features(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
             boundary_ids: tuple[int, ...] = (), batch: int = 64) -> torch.Tensor:
    """(N, D) features of each prompt + completion prefix, read at its last token.

    D = hidden states of `feature_layers` at the last token, then the
    completion tokens' log-probabilities under the model: min, mean, and min
    over the last step (the tokens after the last `boundary_ids` token before
    the end). An empty completion has confidence features 0.
    """
    layers = feature_layers(model)
    seqs = [p + c for p, c in zip(prompts, completions)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a batch: less padding
    out = [None] * len(seqs)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        T = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):  # right padding: positions 0..len-1 stay correct
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        ids, mask = ids.to(device_of(model)), mask.to(device_of(model))
        res = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logp = torch.log_softmax(res.logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        last = mask.sum(-1) - 1  # (B,)
        rows = torch.arange(len(idx), device=ids.device)
        hidden = torch.cat([res.hidden_states[layer][rows, last] for layer in layers], dim=-1).cpu()  # (B, H)
        logp = logp.cpu()  # the features live on the CPU, where the small head trains
        for r, i in enumerate(idx):
            start, end, comp = len(prompts[i]), len(seqs[i]), completions[i]
            conf = torch.zeros(N_CONFIDENCE)
            if comp:
                lp = logp[r, start - 1:end - 1]  # log p(token t | before t) for the completion's tokens
                cut = max([k + 1 for k, t in enumerate(comp[:-1]) if t in boundary_ids], default=0)
                conf = torch.stack([lp.min(), lp.mean(), lp[cut:].min()])
            out[i] = torch.cat([hidden[r], conf])
    return torch.stack(out).float() if out else torch.zeros((0, 0))


class PRM:
    """A trained value head bound to the model whose hidden states it reads."""

    def __init__(self, model, tok, head: ValueHead):
        self.model, self.tok, self.head = model, tok, head.eval()
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.boundary_ids = boundary_ids(tok)

    @torch.no_grad()
    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[float]:
        """P(a continuation reaches a correct answer) for each prompt + completion prefix (ids, no EOS)."""
        if not prompts:
            return []
        x = features(self.model, prompts, completions, self.pad_id, self.boundary_ids)
        return torch.sigmoid(self.head(x)).tolist()

    @classmethod
    def load(cls, folder: str | Path, model, tok) -> "PRM":
        folder = Path(folder)
        if not (folder / META_FILE).is_file():
            raise ConfigError(f"{str(folder)!r} holds no PRM ({META_FILE} missing); train one with `ponder train-prm`")
        meta = json.loads((folder / META_FILE).read_text())
        if meta["dim"] != feature_dim(model):
            raise ConfigError(f"the PRM in {str(folder)!r} reads {meta['dim']}-dim features; this model gives "
                              f"{feature_dim(model)}: it was trained for another model")
        head = ValueHead(meta["dim"], meta["hidden"])
        head.load_state_dict(torch.load(folder / HEAD_FILE, weights_only=True))
        return cls(model, tok, head)


def boundary_ids(tok) -> tuple[int, ...]:
    """Single-token step ends: newline and `</think>` (when the tokenizer has them as one token)."""
    out = []
    for text in ("\n", THINK_CLOSE):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.append(ids[0])
    return tuple(out)


# -- training ----------------------------------------------------------------------------------------
def label_steps(engine: Engine, task, examples, cfg: PRMConfig) -> list[dict]:
    """Math-Shepherd soft labels: one row per step prefix (problem index, prompt ids, completion prefix ids, label)."""
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature)
    prompts = [engine.encode(ex.prompt) for ex in examples]
    newline = engine.tok("\n", add_special_tokens=False)["input_ids"]
    newline_id = newline[0] if len(newline) == 1 else None
    rows, pending = [], []  # pending: (row index, prompt index, prefix length) needing continuations
    groups = rollout(engine, task, examples, cfg.rollouts, params, cfg.seed, cfg.chunk).groups
    for i, group in enumerate(groups):
        for s, ok in zip(group.samples, group.correct):
            ok = float(ok)
            ends = step_ends(list(s.ids), newline_id, engine.think_ids[1], engine.eos_id)
            for e in ends:
                rows.append({"problem": i, "prompt": prompts[i], "ids": list(s.ids[:e]), "hits": ok, "n": 1.0,
                             "final": e == ends[-1]})
                if e != ends[-1] and cfg.max_new_tokens - e > 1:
                    pending.append((len(rows) - 1, i, e))
    # Continuations from every intermediate prefix, batched; the prefix's rollout already counts once.
    for c0 in range(0, len(pending), cfg.chunk):
        part = pending[c0:c0 + cfg.chunk]
        seeds = [[_seed(cfg.seed, "continue", r, k) for k in range(cfg.continuations)] for r, _, _ in part]
        limits = [cfg.max_new_tokens - e for _, _, e in part]
        outs = engine.generate_ids([prompts[i] + rows[r]["ids"] for r, i, _ in part], cfg.continuations, params,
                                   seeds, limits)
        for s in outs:
            r, i, e = part[s.prompt_index]
            prefix_text = engine.tok.decode(rows[r]["ids"], skip_special_tokens=True)
            rows[r]["hits"] += float(task.verify(prefix_text + s.text, examples[i]).status == "correct")
            rows[r]["n"] += 1
    for row in rows:
        row["label"] = row.pop("hits") / row.pop("n")
    return rows


def fit_head(x: torch.Tensor, y: torch.Tensor, cfg: PRMConfig, epochs: int | None = None,
             val: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[ValueHead, int]:
    """Full-batch AdamW on soft binary cross-entropy; x (N, D), y (N,) in [0, 1].

    With `val`, returns the head of the epoch with the lowest held-out loss and
    that epoch count (early stopping: a few hundred prefixes overfit fast).
    """
    torch.manual_seed(cfg.seed)
    head = ValueHead(x.size(1), cfg.hidden)
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0).clamp_min(1e-4))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_epoch, best_state = float("inf"), epochs or cfg.epochs, None
    for epoch in range(1, (epochs or cfg.epochs) + 1):
        loss = F.binary_cross_entropy_with_logits(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if val is not None:
            with torch.no_grad():
                v = float(F.binary_cross_entropy_with_logits(head(val[0]), val[1]))
            if v < best:
                best, best_epoch = v, epoch
                best_state = {k: t.clone() for k, t in head.state_dict().items()}
    if best_state is not None:
        head.load_state_dict(best_state)
    return head.eval(), best_epoch


def pairwise_accuracy(scores: list[float], labels: list[float]) -> float:
    """Share of (higher-label, lower-label) pairs the scores order correctly (AUC for 0/1 labels).

    >>> pairwise_accuracy([0.9, 0.2, 0.5], [1.0, 0.0, 0.0])
    1.0
    """
    pos = [s for s, y in zip(scores, labels) if y >= 0.5]
    neg = [s for s, y in zip(scores, labels) if y < 0.5]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def train_prm(cfg: PRMConfig) -> dict:
    from ponder.models.model import load_model
    C.set_threads(cfg.threads)
    model, tok = load_model(cfg.model, device=cfg.device)
    task = make_task(cfg, tok)  # the same prompts as train and eval
    engine = Engine(model, tok)
    examples = task.examples("train", cfg.problems, seed=cfg.seed)
    rows = label_steps(engine, task, examples, cfg)
    x = features(model, [r["prompt"] for r in rows], [r["ids"] for r in rows], engine.pad_id, boundary_ids(tok))
    y = torch.tensor([r["label"] for r in rows])
    val_problems = set(random.Random(cfg.seed).sample(range(len(examples)), int(cfg.val_share * len(examples))))
    is_val = torch.tensor([r["problem"] in val_problems for r in rows])
    val = (x[is_val], y[is_val]) if is_val.any() else None
    head, epochs = fit_head(x[~is_val], y[~is_val], cfg, val=val)
    metrics = {"step_prefixes": len(rows), "mean_label": float(y.mean()), "train_prefixes": int((~is_val).sum()),
               "epochs": epochs}
    if val is not None:
        with torch.no_grad():
            p = torch.sigmoid(head(x[is_val]))
        yv = y[is_val]
        final = torch.tensor([r["final"] for r in rows])[is_val]
        metrics.update({
            "val_prefixes": int(is_val.sum()),
            "val_bce": float(F.binary_cross_entropy(p, yv)),
            "val_brier": float(((p - yv) ** 2).mean()),
            "val_brier_of_constant": float(((y[~is_val].mean() - yv) ** 2).mean()),
            "val_auc_final_step": pairwise_accuracy(p[final].tolist(), yv[final].tolist()),
            "val_auc_all_steps": pairwise_accuracy(p.tolist(), yv.round().tolist()),
        })
    # Refit on everything, for the early-stopped number of epochs, now the held-out numbers are recorded.
    head, _ = fit_head(x, y, cfg, epochs=epochs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), out / HEAD_FILE)
    meta = {"dim": x.size(1), "hidden": cfg.hidden, "layers": feature_layers(model), "config": asdict(cfg),
            "metrics": metrics}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder train-prm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", help="TOML recipe with PRMConfig keys (top level or [prm])")
    C.add_arguments(ap, PRMConfig)
    args = ap.parse_args(argv)
    cfg = C.from_args(PRMConfig, args, args.recipe, section="prm")
    meta = train_prm(cfg)
    print(json.dumps(meta["metrics"], indent=1))
    print(f"wrote {cfg.out}/{HEAD_FILE} and {META_FILE}")
    return 0
