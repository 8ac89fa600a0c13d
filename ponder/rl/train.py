"""`ponder train`: GRPO (and its family) on a task, from a recipe.

The loop reads like the algorithm (numbers match `ponder.grpo`'s docstring):

    for step in steps:
        batch   = sample_groups(...)          # 1, 2, 4: rollouts, verdicts, rewards, refills
        adv     = advantage_fn(rewards)       # 3
        metrics = update_policy(...)          # 5, 6, 7
        log, checkpoint

Checkpoints are exact: each step's prompts and sampling seeds are functions
of (seed, step), so resuming from a checkpoint replays the same data.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import contextlib

import torch

from ponder.core import checkpoint as ckpt
from ponder.core.device import autocast as autocast_bf16, move, of as device_of, resolve as resolve_device
from ponder.core.lock import run_lock
from ponder.rl.distributed import is_main, my_rows, process_group, reduce_gradients, sharded_rollout
from ponder.rl.offpolicy import (add_is_sums, behaviour_logprobs, is_weight_metrics, staleness_metrics, truncated_weights,
                                 with_behaviour_logprobs)
from ponder.rl.shared_prompt import group_chunks, shared_prompt_hidden, shares_prompt
from ponder.rl.workers import check_config as check_workers_config, rollout_workers, verifier_workers
from ponder.models import lora
from ponder.core import config as C
from ponder.tasks.spec import TaskFields, is_file_task, make_task, sandbox_lines
from ponder.tasks.probe import refuse_gameable
from ponder.core.config import RunFields, ConfigError, check_choices, option
from ponder.models.decoder import supports
from ponder.engine.engine import Engine, Sample, SamplingParams, rollout_copy
from ponder.rl.grpo import (ADVANTAGES, AGGREGATIONS, clipped_policy_loss, grpo_advantages, informative_groups,
                         kl_k3, length_rewards, tool_call_costs)
from ponder.core.metrics import peak_rss_gb, rollout_metrics
from ponder.core.timing import Phases
from ponder.models.model import load_model, load_tokenizer, save_model
from ponder.core.loop import TrainingLoop
from ponder.core.think import format_score
from ponder.tasks.base import Example, Task
from ponder.models.value_head import ValueHead
from ponder.rl.ppo import (clipped_value_loss, entropy_bonus_weight, entropy_coef_update, entropy_forecast,
                           entropy_trend, gae, token_rewards, whiten)
from ponder.rl.rollout import Group, rollout, verdict_score
from ponder.rl.tool_rollout import ToolGroup, masked_completion, tool_metrics
from ponder.verifiers.batch import verify_batch
from ponder.verifiers.tools import ToolFields, Toolbox
from ponder.rl.sampling import PassHistory, choose, record


PRECISIONS = ("fp32", "bf16")
REWARDS = ("score", "correct")


def autocast(precision: str):
    """Matmuls in bf16 (AMX on recent x86 CPUs) while parameters, gradients and the
    optimizer stay fp32; a no-op for fp32."""
    if precision == "bf16":
        return autocast_bf16()
    return contextlib.nullcontext()


@dataclass(frozen=True)
class RLConfig(ToolFields, RunFields, TaskFields):
    model: str = option("tiny", "HF model folder to start from ('tiny' = the built-in base)")
    out: str = option("runs/rl", "run directory: metrics, checkpoints, final model")
    steps: int = option(200, "RL steps")
    prompts_per_step: int = option(16, "groups per step (P)")
    group_size: int = option(8, "samples per prompt (G)")
    max_new_tokens: int = option(128, "completion token limit")
    temperature: float = option(1.0, "sampling temperature for rollouts")
    top_p: float = option(1.0, "nucleus sampling for rollouts")
    lr: float = option(5e-4, "AdamW learning rate (constant after warm-up)")
    warmup: int = option(10, "linear warm-up steps")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "max gradient norm")
    advantage: str = option("grpo", "advantage estimator: group-relative (grpo, rloo) or PPO's per-token GAE "
                            "with a value head on the policy (gae)", choices=(*ADVANTAGES, "gae"))
    gae_gamma: float = option(1.0, "GAE discount (gae only; Open-Reasoner-Zero: 1)")
    gae_lambda: float = option(1.0, "GAE lambda (gae only; Open-Reasoner-Zero: 1)")
    value_coef: float = option(0.5, "weight of the value loss (gae only)")
    value_clip: float = option(0.2, "clip range of the value update around the old values (gae only)")
    value_hidden: int = option(64, "hidden width of the value head's MLP (gae only)")
    whiten_advantages: bool = option(True, "normalise GAE advantages over the batch's tokens (gae only)")
    value_detach: bool = option(True, "the value head reads the policy's hidden state without training it "
                                "(the critic cannot pull the policy's features its way; gae only)")
    value_lr_scale: float = option(1.0, "the value head's learning rate as a multiple of lr (gae only)")
    entropy_target: float = option(0.0, "adaptive entropy control (Skywork-OR1): an entropy bonus, applied only "
                                   "while the mean token entropy is below this target, whose coefficient rises "
                                   "by entropy_coef_step per step below it and falls by as much above; 0 = off")
    entropy_coef_step: float = option(0.005, "change of the entropy bonus coefficient per step")
    entropy_coef_max: float = option(0.05, "largest entropy bonus coefficient")
    entropy_coef_gain: float = option(0.0, "entropy control's proportional term: below the aim the bonus is the "
                                      "coefficient plus gain * (aim - entropy) / aim (capped at entropy_coef_max), "
                                      "so a fast fall is answered the same step; 0 = the integral rule alone")
    entropy_lookahead: float = option(0.0, "entropy control reads the entropy this many steps ahead at its recent "
                                      "trend (an average of the last steps' changes), so a fast fall is met before "
                                      "it arrives; 0 = the last step's entropy")
    entropy_margin: float = option(0.0, "entropy_target as a floor: the controller aims this share above it "
                                   "(target * (1 + margin)), so that its swings around the aim stay above the "
                                   "target; 0 = aim at the target itself (Skywork-OR1)")
    scale_rewards: bool = option(True, "divide by the group std (False = Dr. GRPO)")
    loss_agg: str = option("token", "loss aggregation: token-level (DAPO) or per-sequence (GRPO)",
                           choices=tuple(AGGREGATIONS))
    clip_low: float = option(0.2, "lower clip epsilon of the importance ratio")
    clip_high: float = option(0.28, "upper clip epsilon (> clip_low = DAPO clip-higher)")
    kl_coef: float = option(0.0, "weight of the k3 KL to the frozen starting model (0 = off)")
    track_kl: bool = option(True, "measure KL to the starting model even when kl_coef = 0")
    dynamic_sampling: bool = option(False, "drop groups whose rewards all agree and refill the batch")
    max_refills: int = option(3, "extra sampling rounds allowed per step to refill the batch")
    difficulty_sampling: bool = option(False, "difficulty-aware sampling (MiMo): draw difficulty_pool x P candidate "
                                       "prompts and prefer those whose recent pass rate is strictly between 0 and 1")
    difficulty_window: int = option(8, "recent groups remembered per prompt (and per difficulty level)")
    difficulty_pool: int = option(4, "candidate prompts drawn per prompt kept (difficulty sampling)")
    epochs: int = option(1, "optimisation passes over each rollout batch")
    minibatches: int = option(1, "minibatches per pass")
    reward: str = option("score", "what a sample earns from its verdict: score = the verifier's score (partial "
                         "credit, e.g. the share of fields right), correct = 1 for a correct verdict and 0 "
                         "otherwise (only an exact answer pays)", choices=REWARDS)
    format_weight: float = option(0.0, "weight of the <think>…</think> format reward")
    length_weight: float = option(0.0, "weight of Kimi k1.5's group-relative length reward (long2short RL): "
                                  "+0.5 for a group's shortest correct completion down to -0.5 for its "
                                  "longest; wrong ones never gain. 0 = off")
    tool_call_cost: float = option(0.0, "reward taken off a correct completion per tool call, so that a call pays "
                                   "only where working by hand fails (RL learns when to call); 0 = calls are free")
    save_every: int = option(50, "checkpoint every N steps (and at the end)")
    tensorboard: bool = option(True, "also write TensorBoard event files")
    progress: bool = option(True, "show a progress bar")
    precision: str = option("fp32", "matmul precision: bf16 samples rollouts from a bf16 copy of the policy "
                            "and autocasts the update's matmuls (weights, grads, optimizer stay fp32); "
                            "2-3x faster on CPUs with AMX/AVX512-bf16",
                            choices=PRECISIONS)
    rollout_precision: str = option("same", "precision of the rollouts alone (fp32 or bf16), to sample in one and "
                                    "update in the other; same = as precision",
                                    choices=("same",) + PRECISIONS)
    micro_batch: int = option(16, "rows per forward/backward chunk (gradients accumulate): bounds memory, "
                              "not the update; 0 = the whole minibatch at once")
    micro_batch_tokens: int = option(-1, "also cap a chunk's rows x padded length at this many tokens; "
                                     "-1 = from the model's size (activations grow with tokens x hidden x "
                                     "layers: a full SmolLM2-135M step stays under 6 GB), 0 = no cap")
    skip_zero_advantage: bool = option(True, "exact speed-up: no forward/backward for rows whose advantage is "
                                       "exactly 0 (zero-variance groups) or that have no loss tokens, where "
                                       "that leaves the gradient unchanged (see `skippable_rows`); the loss "
                                       "normaliser still counts every row")
    reuse_logprobs: bool = option(True, "exact speed-up: the old log-probs of the first minibatch come from its "
                                  "own first forward (detached, ratio = 1 exactly) instead of a separate pass, "
                                  "so an on-policy single-epoch, single-minibatch update runs no extra pass")
    share_prompt: bool = option(True, "exact speed-up: the update runs each group's prompt once for all its rows "
                                "(their completions attend to its keys and values, gradients flow back through "
                                "them) instead of once per row; a chunk is one group, its tokens counted as run")
    lora_rank: int = option(0, "LoRA rank (0 = full fine-tuning); needs the peft package")
    lora_alpha: float = option(32.0, "LoRA scaling numerator (scale = alpha / rank)")
    lora_targets: str = option("all-linear", "modules that get adapters: all-linear or names like q_proj,v_proj")
    trust_grader: bool = option(False, "train on a .jsonl task even when `ponder probe` finds that its grader "
                                "rewards an empty, degenerate or copied answer (refused by default)")
    rollout_workers: int = option(0, "Ray actors that generate and verify rollouts, each on its share of a step's "
                                  "prompts (0 = in this process); needs pip install 'ponder[distributed]'")
    max_staleness: int = option(0, "with rollout workers: how many policy versions the rollouts may lag the "
                                "update (step s samples with the weights after step s - K, while the trainer "
                                "updates); 0 = synchronous, the local loop's numbers exactly")
    verifier_workers: int = option(0, "Ray actors that verify the completions of a step, each on its share, while "
                                   "the trainer waits (for slow graders: code tests in the sandbox, math "
                                   "checks); 0 = threads in this process; needs pip install 'ponder[distributed]'")
    ray_address: str = option("", "Ray cluster to join (e.g. ray://host:10001); empty = a local Ray on this machine")
    is_cap: float = option(2.0, "max_staleness >= 1 or sampler_correction: truncation of the importance weight "
                           "pi_prox / pi_behaviour of each completion token")
    sampler_correction: bool = option(False, "weight each completion token by min(pi_update / pi_sampler, is_cap), the "
                                      "sampler's log-probs recorded as it samples (truncated importance sampling): "
                                      "corrects for the sampler computing other numbers than the update (a bf16 copy, "
                                      "ponder's decoder) even when the rollouts do not lag")

    @property
    def sampler_precision(self) -> str:
        """The precision rollouts are sampled in: `rollout_precision`, or `precision` for "same"."""
        return self.precision if self.rollout_precision == "same" else self.rollout_precision

    @property
    def entropy_aim(self) -> float:
        """The entropy the controller steers to (0 = control off)."""
        return self.entropy_target * (1 + self.entropy_margin)

    def __post_init__(self):
        check_choices(self)
        check_workers_config(self)
        ToolFields.__post_init__(self)
        if self.tools and (self.rollout_workers or self.advantage == "gae"):
            raise ConfigError(f"tools = {self.tools!r} is not supported yet with rollout_workers >= 1 or "
                              f"advantage = 'gae' (GAE would bootstrap across the tool outputs); use the local "
                              f"loop and a group-relative advantage ({', '.join(ADVANTAGES)})")
        if self.sampler_correction and self.tools:
            raise ConfigError(f"sampler_correction with tools = {self.tools!r} is not supported yet: tool rollouts do "
                              f"not record the sampler's log-probs; turn one of them off")
        if self.micro_batch < 0 or self.lora_rank < 0:
            raise ConfigError(f"micro_batch and lora_rank must be >= 0, got {self.micro_batch}, {self.lora_rank}")
        if self.micro_batch_tokens < -1:
            raise ConfigError(f"micro_batch_tokens must be -1 (auto), 0 (no cap) or a token count, "
                              f"got {self.micro_batch_tokens}")
        for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "epochs", "minibatches", "save_every",
                     "difficulty_window", "difficulty_pool"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RLConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 for group-relative advantages, got {self.group_size}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ConfigError(f"clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if not (0 <= self.gae_gamma <= 1 and 0 <= self.gae_lambda <= 1) or self.value_clip <= 0 \
                or self.value_coef < 0 or self.value_hidden < 1 or self.value_lr_scale <= 0:
            raise ConfigError(f"need gae_gamma, gae_lambda in [0, 1], value_clip > 0, value_coef >= 0, "
                              f"value_hidden >= 1, value_lr_scale > 0; got {self.gae_gamma}, {self.gae_lambda}, {self.value_clip}, "
                              f"{self.value_coef}, {self.value_hidden}")
        if min(self.entropy_target, self.entropy_coef_step, self.entropy_coef_max, self.entropy_margin,
               self.entropy_coef_gain, self.entropy_lookahead) < 0:
            raise ConfigError(f"entropy_target, entropy_coef_step, entropy_coef_max, entropy_margin, "
                              f"entropy_coef_gain and entropy_lookahead must be >= 0; got {self.entropy_target}, "
                              f"{self.entropy_coef_step}, {self.entropy_coef_max}, {self.entropy_margin}, "
                              f"{self.entropy_coef_gain}, {self.entropy_lookahead}")
        if self.tool_call_cost and not self.tools:
            raise ConfigError(f"tool_call_cost = {self.tool_call_cost} needs tools (e.g. tools = 'calculator'); "
                              f"without tools no completion calls one")
        if self.lr <= 0 or self.kl_coef < 0 or self.format_weight < 0 or self.length_weight < 0 or self.tool_call_cost < 0:
            raise ConfigError(f"lr must be > 0, kl_coef, format_weight, length_weight and tool_call_cost >= 0; got "
                              f"{self.lr}, {self.kl_coef}, {self.format_weight}, {self.length_weight}, {self.tool_call_cost}")
        if (self.prompts_per_step * self.group_size) % self.minibatches:
            raise ConfigError(f"minibatches={self.minibatches} must divide the batch of "
                              f"{self.prompts_per_step * self.group_size} rows")


# -- rollouts --------------------------------------------------------------------------
def step_examples(task: Task, cfg: RLConfig, step: int, round_: int, history: PassHistory | None = None) -> list[Example]:
    """The prompts of one step (and refill round): a pure function of (seed, step, round) and,
    with difficulty sampling, of the pass history (`ponder.rl.sampling`)."""
    seed = cfg.seed * 1_000_003 + step * 101 + round_
    if not cfg.difficulty_sampling:
        return task.examples("train", cfg.prompts_per_step, seed=seed)
    candidates = task.examples("train", cfg.prompts_per_step * cfg.difficulty_pool, seed=seed)
    return choose(candidates, history or PassHistory(cfg.difficulty_window), cfg.prompts_per_step,
                  torch.Generator().manual_seed(seed))


def correct_only(sample, verdict) -> float:
    """1 for a correct verdict, 0 for any other, whatever partial credit its score gives."""
    return float(verdict.status == "correct")


def reward_fn(cfg: RLConfig):
    """The task's verdict score (or its correctness alone), plus the optional <think> format reward."""
    base = correct_only if cfg.reward == "correct" else verdict_score
    if not cfg.format_weight:
        return base
    return lambda s, v: base(s, v) + cfg.format_weight * format_score(s.text)


def group_rewards(group: Group, length_weight: float, tool_call_cost: float = 0.0) -> torch.Tensor:
    """(G,) rewards of one group: NaN where invalid, plus the length reward on valid rows and the
    cost of the tool calls of correct rows (a group without tool calls pays none)."""
    r = torch.tensor([group.rewards])  # (1, G)
    if length_weight:
        r = r + length_weight * length_rewards(torch.tensor([[len(s.ids) for s in group.samples]]),
                                               torch.tensor([group.correct]), torch.tensor([group.valid]))
    if tool_call_cost and isinstance(group, ToolGroup):
        r = r + tool_call_costs(torch.tensor([[len(c) for c in group.calls]]), torch.tensor([group.correct]),
                                tool_call_cost)
    return r[0]


@dataclass(frozen=True)
class StepRollouts:
    groups: list[Group]  # the groups the update trains on (informative ones with dynamic sampling)
    rewards: list[torch.Tensor]  # (G,) per group, as the advantages see them
    metrics: dict
    seen: tuple[Group, ...] = ()  # every group sampled this step, refills included


def entropy_control(learner, cfg: RLConfig, bonus: float, entropy: float) -> dict[str, float]:
    """After a step: the controller's metrics (entropy_coef = the weight this step trained with,
    0 above the aim), then its coefficient's update from the step's entropy."""
    out = {"entropy_coef": bonus, "entropy_coef_state": learner.entropy_coef,
           "entropy_below_target": float(entropy < cfg.entropy_target)}
    learner.entropy_coef = entropy_coef_update(learner.entropy_coef, entropy, cfg.entropy_aim,
                                               cfg.entropy_coef_step, cfg.entropy_coef_max)
    learner.entropy_trend = entropy_trend(learner.entropy_trend, entropy, learner.entropy_seen)
    learner.entropy_seen = entropy
    if cfg.entropy_lookahead:
        out["entropy_forecast"] = entropy_forecast(entropy, learner.entropy_trend, cfg.entropy_lookahead)
    return out


def sample_groups(engine: Engine, task: Task, cfg: RLConfig, step: int,
                  history: PassHistory | None = None, toolbox: Toolbox | None = None,
                  verify=verify_batch) -> StepRollouts:
    """Rollouts of P groups with their rewards; with dynamic sampling, only informative groups.
    With `toolbox` the rollouts call tools, and the metrics count the calls (`tool_metrics`);
    `verify` checks the completions (`verify_batch`'s signature: a pool of verifier workers is one)."""
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            logprobs=cfg.sampler_correction and not hasattr(engine, "remote_rollout"))
    kept: list[tuple[Group, torch.Tensor]] = []
    seen: list[Group] = []
    gen_s, gen_tokens, zero_var = 0.0, 0, []
    for round_ in range(1 + (cfg.max_refills if cfg.dynamic_sampling else 0)):
        out = sharded_rollout(engine, task, step_examples(task, cfg, step, round_, history), cfg.group_size, params,
                      seed=cfg.seed * 7_919 + step * 13 + round_, reward=reward_fn(cfg), policy_version=step,
                      toolbox=toolbox, verify=verify)
        if params.logprobs:  # the local sampler's own log-probs: the behaviour policy of `sampler_correction`
            out = with_behaviour_logprobs(out)
        gen_s, gen_tokens = gen_s + out.seconds, gen_tokens + out.generated_tokens
        for group in out.groups:
            r = group_rewards(group, cfg.length_weight, cfg.tool_call_cost)
            informative = bool(informative_groups(r[None])[0])
            if round_ == 0:
                zero_var.append(not informative)
            if informative or not cfg.dynamic_sampling:
                kept.append((group, r))
        seen += out.groups
        if not cfg.dynamic_sampling or len(kept) >= cfg.prompts_per_step:
            break
    kept = kept[: cfg.prompts_per_step]
    rewards = [x for g in seen for x in g.rewards if not math.isnan(x)] or [0.0]
    metrics = rollout_metrics([s for g in seen for s in g.samples], [v for g in seen for v in g.verdicts], rewards)
    metrics.update(zero_var_frac=sum(zero_var) / len(zero_var), gen_seconds=gen_s,
                   tokens_per_s=gen_tokens / gen_s if gen_s else 0.0, groups_used=len(kept))
    if cfg.difficulty_sampling:  # share of this step's first-round prompts that taught (1 - zero_var_frac)
        metrics["informative_frac"] = 1 - metrics["zero_var_frac"]
    if toolbox is not None:  # per completion over every group sampled this step
        metrics.update(tool_metrics(seen))
    return StepRollouts([g for g, _ in kept], [r for _, r in kept], metrics, tuple(seen))


# -- policy update -----------------------------------------------------------------------
def pack(samples: list[Sample], pad_id: int):
    """Right-padded (ids, attention_mask, completion_mask), each (B, L); the mask marks the
    positions whose *next* token is a completion token (so logits[:, :-1] line up)."""
    rows = [list(s.prompt_ids) + list(s.ids) for s in samples]
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), L), dtype=torch.long)
    comp = torch.zeros((len(rows), L - 1))
    for i, (s, r) in enumerate(zip(samples, rows)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        comp[i, len(s.prompt_ids) - 1: len(r) - 1] = 1.0
    return ids, attn, comp


def policy_logits(model, ids, attn):
    return model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (B, L-1, V)


def body_and_head(model):
    """(decoder body, lm_head) of a Llama-family model (LoRA-wrapped or not), or None.

    With them the head runs on completion positions only: over a 50k vocabulary
    the head and its log-softmax cost as much as a dozen layers, and prompt and
    padding positions never enter the loss."""
    plain = lora.plain_model(model)
    return (plain.model, plain.lm_head) if supports(plain) else None


def completion_logprobs(model, ids, attn, comp, value_head=None, entropy_grad: bool = False,
                        value_detach: bool = True, prompt_len: int = 0):
    """Log-probs of the next tokens, the entropy and (with `value_head`) the value at each
    completion position, each (B, L-1) with zeros elsewhere; one log-softmax serves log-probs
    and entropy, one hidden state serves the LM head and the value head. The entropy carries
    a gradient only when `entropy_grad` (an entropy bonus trains on it). With `prompt_len` P > 0
    the rows share their first P tokens (one group's prompt), which run once (`shared_prompt`)."""
    targets = ids[:, 1:]
    sel = comp.bool()  # (B, L-1)
    parts = body_and_head(model)
    values = None
    if parts is None:
        if value_head is not None:
            raise ConfigError("advantage = 'gae' needs a Llama-family model (the value head reads its hidden state)")
        logits = policy_logits(model, ids, attn)[sel]  # (N, V)
    else:
        body, head = parts
        if prompt_len:  # positions before P-1 hold no completion token: the same (N, D) rows, in order
            hidden = shared_prompt_hidden(body, ids, attn, prompt_len)[sel[:, prompt_len - 1:]]
        else:
            hidden = body(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1][sel]  # (N, D)
        logits = head(hidden)  # (N, V)
        if value_head is not None:
            h = hidden.detach() if value_detach else hidden
            v = value_head(h.float())  # (N,)
            values = torch.zeros(sel.shape, dtype=v.dtype, device=sel.device).masked_scatter(sel, v)
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp_sel = logp_all.gather(-1, targets[sel].unsqueeze(-1)).squeeze(-1)  # (N,)
    logp = torch.zeros(sel.shape, dtype=logp_sel.dtype, device=sel.device).masked_scatter(sel, logp_sel)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        ent = -(logp_all.exp() * logp_all).sum(-1)
        entropy = torch.zeros(sel.shape, dtype=ent.dtype, device=sel.device).masked_scatter(sel, ent)
    return logp, entropy, values


def row_chunks(rows: torch.Tensor, lengths: torch.Tensor, micro_batch: int, max_tokens: int = 0) -> list[torch.Tensor]:
    """Split row indices into forward/backward chunks, rows of similar length together so
    that each chunk carries little padding. A chunk holds at most `micro_batch` rows
    (0 = no row cap) and, when `max_tokens` > 0, at most that many rows x padded length
    (always at least one row)."""
    rows = rows[lengths[rows].argsort(stable=True)]
    chunks, start = [], 0
    for end in range(1, len(rows) + 1):
        n, longest = end - start, int(lengths[rows[end - 1]])  # ascending: the last row is the longest
        if n > 1 and ((micro_batch and n > micro_batch) or (max_tokens and n * longest > max_tokens)):
            chunks.append(rows[start:end - 1])
            start = end - 1
    if start < len(rows):
        chunks.append(rows[start:])
    return chunks


# Activation budget of one chunk, in tokens x hidden size x layers. A full fine-tuning
# step of SmolLM2-135M (576 x 30) measured 5.4 GB at 4 rows x ~180 tokens and 7.0 GB at
# 8 rows: 12M keeps it near the first (~690 tokens) and never binds on the tiny model.
ACTIVATION_BUDGET = 12_000_000


def chunk_tokens(model, micro_batch_tokens: int) -> int:
    """Token cap of a forward/backward chunk: the configured one, or -1 -> from the model's size."""
    if micro_batch_tokens >= 0:
        return micro_batch_tokens
    cfg = lora.plain_model(model).config
    width = getattr(cfg, "hidden_size", 0) * getattr(cfg, "num_hidden_layers", 0)
    return max(1, ACTIVATION_BUDGET // width) if width else 0


def update_chunks(model, batch: "RLBatch", rows: torch.Tensor, micro_batch: int, max_tokens: int,
                  share: bool) -> list[tuple[torch.Tensor, int]]:
    """(rows, shared prompt length) chunks of the update: one group per chunk, its prompt run once,
    when `share` and the batch knows its groups (`shared_prompt`); else `row_chunks` with 0."""
    lengths = batch.attn.sum(1).cpu()
    if share and batch.groups is not None and body_and_head(model) is not None:
        chunks = group_chunks(rows, batch.groups.cpu(), batch.prompt_lens.cpu(), lengths, micro_batch, max_tokens)
        return [(c, P) if shares_prompt(batch.ids[c], batch.comp[c], P) else (c, 0) for c, P in chunks]
    return [(c, 0) for c in row_chunks(rows, lengths, micro_batch, max_tokens)]


def trimmed(batch: RLBatch, rows: torch.Tensor) -> tuple:
    """(ids, attn, comp) of `rows`, cut to their longest sequence: right padding beyond it
    is dead compute, and nothing beyond it enters the loss."""
    L = int(batch.attn[rows].sum(1).max())
    return batch.ids[rows, :L], batch.attn[rows, :L], batch.comp[rows, :L - 1]


# Share of one row chunk in its minibatch's aggregate, so that the chunks' weighted losses
# sum to exactly the loss of the whole minibatch (gradient accumulation without bias).
CHUNK_WEIGHTS = {
    "token": lambda mask_chunk, mask_all: mask_chunk.sum() / mask_all.sum().clamp_min(1.0),
    "sequence": lambda mask_chunk, mask_all: mask_chunk.size(0) / mask_all.size(0),
}


@torch.no_grad()
def chunked_logprobs(model, batch: "RLBatch", micro_batch: int, precision: str, max_tokens: int = 0,
                     rows: torch.Tensor | None = None, share: bool = False) -> torch.Tensor:
    """(B, L-1) completion log-probs of `rows` (default: the whole batch; zeros elsewhere),
    one `update_chunks` chunk at a time."""
    B, L = batch.ids.shape
    out = torch.zeros((B, L - 1), device=batch.ids.device)
    for chunk, P in update_chunks(model, batch, torch.arange(B) if rows is None else rows, micro_batch,
                                  max_tokens, share):
        ids, attn, comp = trimmed(batch, chunk)
        with autocast(precision):
            logp, _, _ = completion_logprobs(model, ids, attn, comp, prompt_len=P)
        out[chunk, : logp.size(1)] = logp
    return out


def skippable_rows(batch: "RLBatch", cfg: RLConfig, entropy_coef: float) -> torch.Tensor:
    """(B,) bool: rows whose forward/backward cannot change the update (`skip_zero_advantage`).

    A row without loss tokens (an invalid verdict, masked out) never can. A row whose
    advantage is exactly 0 (every row of a zero-variance GRPO/RLOO group) adds
    -min(r * 0, clip(r) * 0) = 0 to the surrogate at any ratio r, so a zero gradient, in any
    epoch -- but only while nothing else in its per-token loss depends on it. It does not
    hold, and such rows are trained, with a KL term (kl_coef > 0), an entropy bonus (a weight
    > 0, or adaptive entropy control: its next weight reads the measured entropy), or PPO
    (advantage = gae: per-token advantages and a value loss on every row). The aggregation's
    normaliser (the minibatch's token or row count, `CHUNK_WEIGHTS`) still counts the skipped
    rows, so the loss and its gradient are those of the full minibatch. Token-averaged
    metrics (entropy, KL) then cover the rows trained on."""
    if not cfg.skip_zero_advantage:
        return torch.zeros(batch.comp.size(0), dtype=torch.bool)
    empty = batch.comp.sum(1) == 0
    if cfg.advantage == "gae" or batch.adv.dim() != 1 or cfg.kl_coef > 0 or entropy_coef > 0 or cfg.entropy_target > 0:
        return empty
    return empty | (batch.adv == 0)


def old_logprobs(model, batch: "RLBatch", cfg: RLConfig, first_minibatch: torch.Tensor, trained: torch.Tensor,
                 max_tokens: int) -> torch.Tensor | None:
    """(B, L-1) log-probs of the policy that sampled, from a separate pass, or None when no row needs one.

    The rows of the first minibatch meet the policy before any optimizer step: with
    `reuse_logprobs` their old log-probs are their own first forward's, detached (filled in
    by `minibatch_gradients`; ratio = 1 exactly), so one epoch of one minibatch -- on-policy
    GRPO -- runs no pass at all. (The rollout's own log-probs would not do: rollouts sample
    from a bf16 copy with ponder's decoder, whose numbers differ slightly from the update's.)"""
    if cfg.reuse_logprobs and cfg.epochs == 1 and cfg.minibatches == 1:
        return None
    need = trained.clone()
    if cfg.reuse_logprobs:
        need[first_minibatch] = False
    return chunked_logprobs(model, batch, cfg.micro_batch, cfg.precision, max_tokens, need.nonzero()[:, 0],
                            cfg.share_prompt)


def minibatch_gradients(model, batch: "RLBatch", mb: torch.Tensor, trained: torch.Tensor, cfg: RLConfig, aggregate,
                        value_head, entropy_coef: float, old_logp, ref_logp, fill_old: bool,
                        count_is: bool = False) -> dict:
    """Accumulate the gradient of minibatch `mb`'s loss over row chunks of its rows in `trained`
    (weighted by `CHUNK_WEIGHTS` against all of `mb`); returns the sums its metrics come from.
    With `fill_old`, each chunk's detached log-probs become its rows' old log-probs; with
    `count_is`, the sums hold the importance weights' sums under "is" (first epoch: each token once)."""
    mask_mb = batch.comp[mb]
    sums = dict.fromkeys(("loss", "clip_frac", "entropy", "kl", "value_loss", "tokens", "padded_tokens", "seen"), 0.0)
    chunks = update_chunks(model, batch, mb[trained[mb]], cfg.micro_batch, chunk_tokens(model, cfg.micro_batch_tokens),
                           cfg.share_prompt)
    with autocast(cfg.precision):  # one region for all chunks: autocast caches each weight's bf16 copy, cast once
        for rows, P in chunks:
            _chunk_gradients(model, batch, rows, P, mask_mb, cfg, aggregate, value_head, entropy_coef, old_logp,
                             ref_logp, fill_old, sums, count_is)
    return sums


def _chunk_gradients(model, batch, rows, prompt_len, mask_mb, cfg, aggregate, value_head, entropy_coef, old_logp,
                     ref_logp, fill_old, sums, count_is: bool = False) -> None:
    """Forward, loss and backward of one row chunk of a minibatch (inside its autocast region),
    adding its metric sums to `sums` (with `count_is`, the importance weights' too, under "is");
    the chunk's rows share their first `prompt_len` tokens (0: none)."""
    weight = CHUNK_WEIGHTS[cfg.loss_agg]
    ids, attn, mask = trimmed(batch, rows)
    T = mask.size(1)
    logp, entropy, values = completion_logprobs(model, ids, attn, mask, value_head, entropy_coef > 0,
                                                cfg.value_detach, prompt_len)
    old = logp.detach() if old_logp is None or fill_old else old_logp[rows, :T]
    if fill_old and old_logp is not None:
        old_logp[rows, :T] = old
    a = batch.adv[rows] if batch.adv.dim() == 1 else batch.adv[rows, :T]
    per_tok, clipped = clipped_policy_loss(logp, old, a, cfg.clip_low, cfg.clip_high)
    if batch.behaviour_logp is not None:  # rollouts that may lag: each token weighted by pi_prox / pi_behaviour
        w, is_sums = truncated_weights(old, batch.behaviour_logp[rows, :T], mask, cfg.is_cap)  # old = proximal
        per_tok = per_tok * w
        if count_is:
            sums["is"] = add_is_sums(sums.get("is"), is_sums)
    if values is not None:  # PPO's critic, trained on the same tokens
        vl = clipped_value_loss(values, batch.old_values[rows, :T], batch.returns[rows, :T], cfg.value_clip)
        per_tok = per_tok + cfg.value_coef * vl
        sums["value_loss"] += (vl.detach() * mask).sum().item()
    if entropy_coef > 0:
        per_tok = per_tok - entropy_coef * entropy
    kl = kl_k3(logp, ref_logp[rows, :T]) if ref_logp is not None else None
    if kl is not None and cfg.kl_coef > 0:
        per_tok = per_tok + cfg.kl_coef * kl
    loss = aggregate(per_tok, mask) * weight(mask, mask_mb)
    if not torch.isfinite(loss):
        raise FloatingPointError("non-finite loss")
    with torch.autocast(ids.device.type, enabled=False):  # backward in the forward's dtypes, as outside a region
        loss.backward()
    with torch.no_grad():
        sums["loss"] += loss.item()
        sums["clip_frac"] += (clipped.float() * mask).sum().item()
        sums["entropy"] += (entropy * mask).sum().item()
        sums["kl"] += (kl * mask).sum().item() if kl is not None else 0.0
        sums["seen"] += mask.sum().item()
        shared = (ids.size(0) - 1) * prompt_len  # prompt tokens run once for the chunk, not once per row
        sums["tokens"] += attn.sum().item() - shared
        sums["padded_tokens"] += attn.numel() - shared


def update_policy(model, ref_model, opt, batch: "RLBatch", cfg: RLConfig, aggregate, value_head=None,
                  entropy_coef: float = 0.0, phases: Phases | None = None) -> dict:
    """Steps 5-7: clipped surrogate (+ optional KL), aggregated, for `epochs` x `minibatches`.

    Each minibatch is one optimizer step; its forward/backward runs in chunks of at
    most `micro_batch` rows and `micro_batch_tokens` tokens whose gradients accumulate (weighted by `CHUNK_WEIGHTS`), so
    peak memory follows the chunk, not the batch. Rows that cannot change the gradient are
    skipped (`skippable_rows`); `phases` collects the seconds of log-prob passes, forward/backward
    and optimizer steps.
    """
    phases = phases if phases is not None else Phases()
    B = batch.comp.size(0)
    max_tokens = chunk_tokens(model, cfg.micro_batch_tokens)
    trained = ~skippable_rows(batch, cfg, entropy_coef).cpu()  # row bookkeeping stays on the CPU
    minibatches = list(torch.arange(B).chunk(cfg.minibatches))
    mine = my_rows(trained, batch.attn.sum(1).cpu(), minibatches)  # under torchrun this rank's share, else all
    with phases("logprobs"):
        old_logp = old_logprobs(model, batch, cfg, minibatches[0], mine, max_tokens)
        ref_logp = (chunked_logprobs(ref_model, batch, cfg.micro_batch, cfg.precision, max_tokens,
                                     mine.nonzero()[:, 0], cfg.share_prompt) if ref_model is not None else None)
    params = list(lora.trainable_parameters(model)) + (list(value_head.parameters()) if value_head else [])
    stats = dict.fromkeys(("loss", "clip_frac", "entropy", "kl", "grad_norm", "value_loss"), 0.0)
    tokens = dict.fromkeys(("update_tokens", "update_padded_tokens"), 0.0)
    n_updates, is_sums = 0, None
    for epoch in range(cfg.epochs):
        for i, mb in enumerate(minibatches):
            opt.zero_grad(set_to_none=True)
            with phases("fwd_bwd"):
                sums = minibatch_gradients(model, batch, mb, mine, cfg, aggregate, value_head, entropy_coef,
                                           old_logp, ref_logp, fill_old=cfg.reuse_logprobs and epoch == 0 and i == 0,
                                           count_is=epoch == 0)
                if "is" in sums:  # rollout workers are refused under torchrun: these sums stay local
                    is_sums = add_is_sums(is_sums, sums.pop("is"))
                sums = reduce_gradients(params, sums)  # torchrun: gradients and sums of every rank's rows
            with phases("optimizer"):
                if not sums["padded_tokens"]:  # every row skipped: the zero gradient the full pass gives
                    for p in params:
                        p.grad = torch.zeros_like(p)
                gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if not torch.isfinite(gn):
                    raise FloatingPointError("non-finite gradient norm")
                opt.step()
            stats["loss"] += sums["loss"]
            stats["clip_frac"] += sums["clip_frac"] / batch.comp[mb].sum().clamp_min(1).item()
            for k in ("entropy", "kl", "value_loss"):
                stats[k] += sums[k] / max(sums["seen"], 1.0)
            stats["grad_norm"] += gn.item()
            tokens["update_tokens"] += sums["tokens"]
            tokens["update_padded_tokens"] += sums["padded_tokens"]
            n_updates += 1
    out = {k: v / n_updates for k, v in stats.items()}
    if value_head is None:
        out.pop("value_loss")
    if batch.behaviour_logp is not None:
        out.update(is_weight_metrics(is_sums))
    return {**out, **tokens, "skipped_frac": 1.0 - trained.float().mean().item()}


@dataclass(frozen=True)
class RLBatch:
    """What the update trains on; every tensor has B = P*G rows."""
    ids: torch.Tensor  # (B, L) prompt + completion, right-padded
    attn: torch.Tensor  # (B, L)
    comp: torch.Tensor  # (B, L-1) 1 where the next token is a completion token of a valid row
    adv: torch.Tensor  # (B,) one advantage per sequence, or (B, L-1) per token (GAE)
    rewards: torch.Tensor | None = None  # (B,) sequence rewards (0 where invalid)
    returns: torch.Tensor | None = None  # (B, L-1) value targets (GAE)
    old_values: torch.Tensor | None = None  # (B, L-1) the value head before the update (GAE)
    behaviour_logp: torch.Tensor | None = None  # (B, L-1) the sampling policy's log-probs of lagging rollouts (offpolicy)
    groups: torch.Tensor | None = None  # (B,) the group of each row: its rows share one prompt (shared_prompt)
    prompt_lens: torch.Tensor | None = None  # (B,) prompt tokens at the start of each row


def build_batch(rolled: StepRollouts, pad_id: int, advantage_fn) -> RLBatch:
    samples = [s for g in rolled.groups for s in g.samples]
    rewards = torch.stack(rolled.rewards)  # (P, G)
    adv = advantage_fn(rewards).reshape(-1) if advantage_fn is not None else torch.zeros(rewards.numel())
    ids, attn, comp = pack(samples, pad_id)
    comp = masked_completion(comp, rolled.groups)  # tokens a tool wrote: no loss, no KL (ponder.rl.tool_rollout)
    invalid = torch.tensor([not ok for g in rolled.groups for ok in g.valid])
    comp[invalid] = 0.0  # a verifier failure teaches nothing: masked out of the loss
    groups = torch.tensor([i for i, g in enumerate(rolled.groups) for _ in g.samples])
    prompt_lens = torch.tensor([len(s.prompt_ids) for s in samples])
    # the sampling policy's log-probs, where rollout workers recorded them (rollouts that may lag: offpolicy)
    behaviour = behaviour_logprobs(rolled.groups, comp) if any(g.behaviour_logprobs for g in rolled.groups) else None
    return RLBatch(ids, attn, comp, adv, rewards=torch.nan_to_num(rewards.reshape(-1), nan=0.0), groups=groups,
                   prompt_lens=prompt_lens, behaviour_logp=behaviour)


@torch.no_grad()
def with_gae(model, value_head, batch: RLBatch, cfg: RLConfig) -> RLBatch:
    """`batch` with per-token GAE advantages, value targets and the old values (PPO)."""
    B, L = batch.ids.shape
    old_values = torch.zeros((B, L - 1), device=batch.ids.device)
    max_tokens = chunk_tokens(model, cfg.micro_batch_tokens)
    for rows in row_chunks(torch.arange(B), batch.attn.sum(1).cpu(), cfg.micro_batch, max_tokens):
        ids, attn, comp = trimmed(batch, rows)
        with autocast(cfg.precision):
            _, _, v = completion_logprobs(model, ids, attn, comp, value_head)
        old_values[rows, : v.size(1)] = v.float()
    mask = batch.comp
    adv, returns = gae(token_rewards(batch.rewards, mask), old_values * mask, mask, cfg.gae_gamma, cfg.gae_lambda)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask)
    return replace(batch, adv=adv, returns=returns, old_values=old_values * mask)


def step_breakdown(seconds: dict[str, float], gen_seconds: float, step_seconds: float) -> dict[str, float]:
    """A step's wall seconds by phase (the `time_*` metrics the benchmarks print): generation,
    verification (the rollout's time outside the engine: verifiers, rewards), log-prob passes
    (old, reference, GAE values), forward/backward, optimizer, and the rest.

    >>> step_breakdown({"rollout": 3.0, "fwd_bwd": 4.0}, 2.0, 8.0)["time_other"]
    1.0
    """
    out = {"time_generation": gen_seconds, "time_verification": seconds.get("rollout", gen_seconds) - gen_seconds}
    out.update({f"time_{k}": seconds.get(k, 0.0) for k in ("logprobs", "fwd_bwd", "optimizer")})
    out["time_other"] = step_seconds - sum(out.values())
    return out


# -- the run -----------------------------------------------------------------------------
def _policy(cfg: RLConfig, checkpoint: Path | None = None):
    """The policy to train: the start model (with fresh LoRA adapters when asked), or the
    weights of `checkpoint` on resume -- loaded once either way."""
    if checkpoint is not None and not lora.is_adapter_folder(checkpoint):
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    else:
        model = load_model(cfg.model)[0]
        if checkpoint is not None:  # LoRA checkpoints hold the adapter; the base comes from cfg.model
            model = lora.load_adapter_checkpoint(model, checkpoint)
        elif cfg.lora_rank:
            with torch.random.fork_rng():  # the adapters' init follows the run's seed, nothing else
                torch.manual_seed(cfg.seed)
                model = lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    plain = lora.plain_model(model)
    if cfg.precision == "bf16" and hasattr(plain, "set_attn_implementation"):
        # CPU flash attention's bf16 backward is slower than eager attention at RL lengths
        # (SmolLM2-135M, 16 rows x 100 tokens: 7.6 s vs 4.7 s); rollouts use ponder's decoder anyway.
        plain.set_attn_implementation("eager")
    return model.to(resolve_device(cfg.device))


@dataclass
class Learner:
    """What the update changes, and so what a checkpoint holds to resume it exactly."""
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    value_head: ValueHead | None = None  # PPO's critic (advantage = "gae")
    entropy_coef: float = 0.0  # adaptive entropy control: the bonus's coefficient
    entropy_seen: float | None = None  # adaptive entropy control: the last step's mean token entropy
    entropy_trend: float = 0.0  # adaptive entropy control: its average change per step
    pass_history: PassHistory | None = None  # difficulty sampling: recent groups per prompt (not the update's, but run state)

    def state(self, cfg: RLConfig) -> dict:
        out = {"optimizer": self.opt.state_dict(), "config": asdict(cfg), "entropy_coef": self.entropy_coef,
               "entropy_seen": self.entropy_seen, "entropy_trend": self.entropy_trend}
        if self.pass_history is not None:
            out["pass_history"] = dict(self.pass_history.records)
        if self.value_head is not None:
            out["value_head"] = self.value_head.state_dict()
        return out


def _learner(model, cfg: RLConfig) -> Learner:
    head = None
    groups = [{"params": list(lora.trainable_parameters(model)), "lr_scale": 1.0}]
    if cfg.advantage == "gae":
        torch.manual_seed(cfg.seed)
        head = ValueHead(lora.plain_model(model).config.hidden_size, cfg.value_hidden).to(device_of(model))
        groups.append({"params": list(head.parameters()), "lr_scale": cfg.value_lr_scale})
    # fused: one kernel per tensor instead of a dozen elementwise passes over it (torch's CPU default
    # is the per-tensor loop); the same math up to fp32 rounding. bench/bench_peak.py times both.
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99), fused=True)
    return Learner(model, opt, head)


def setup(cfg: RLConfig, resume: bool, log_prefix: str = "") -> tuple[Learner, object, int]:
    """(learner, tokenizer, first step): fresh, or restored from the newest good checkpoint."""
    tok = load_tokenizer(cfg.model)
    if not resume:
        return _learner(_policy(cfg), cfg), tok, 0
    last, state = ckpt.load_latest(Path(cfg.out) / "checkpoints", ckpt.load_state, say=lambda s: print(log_prefix + s))
    learner = _learner(_policy(cfg, last), cfg)
    if learner.value_head is not None:
        learner.value_head.load_state_dict(state["value_head"])
    learner.opt.load_state_dict(state["optimizer"])
    learner.entropy_coef = state.get("entropy_coef", 0.0)
    learner.entropy_seen = state.get("entropy_seen")
    learner.entropy_trend = state.get("entropy_trend", 0.0)
    if "pass_history" in state:
        learner.pass_history = PassHistory(cfg.difficulty_window, state["pass_history"])
    ckpt.set_rng_state(state["rng"])
    print(f"{log_prefix}resuming from {last.name} (step {state['step']} of {cfg.steps})")
    return learner, tok, state["step"]


def reference_model(cfg: RLConfig):
    """The frozen start model for the KL term (and its tracking), or None."""
    if not (cfg.kl_coef > 0 or cfg.track_kl):
        return None
    ref = load_model(cfg.model, device=cfg.device)[0]
    return ref.requires_grad_(False)


def train(cfg: RLConfig, resume: bool = False, log_prefix: str = "") -> Path:
    # one writer per run folder (under torchrun: rank 0): a second run on it is refused, naming this pid
    with process_group(resolve_device(cfg.device)), run_lock(cfg.out) if is_main() else contextlib.nullcontext():
        return _train(cfg, resume, log_prefix)


def _train(cfg: RLConfig, resume: bool, log_prefix: str) -> Path:
    C.set_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg, load_tokenizer(cfg.model))
    for line in sandbox_lines(task):  # a code task: say which sandbox holds the model's programs
        print(f"{log_prefix}{line}")
    if is_file_task(cfg.task) and not cfg.trust_grader:
        refuse_gameable(task)  # a user's grader: a reward the policy can game is refused before training
    toolbox = Toolbox.from_fields(cfg)  # None without tools; a tool that cannot run here fails before the model loads
    learner, tok, start = setup(cfg, resume, log_prefix)
    model, opt = learner.model, learner.opt
    ref_model = reference_model(cfg)
    ck_root = out / "checkpoints"
    if is_main():  # under torchrun rank 0 alone writes: config, metrics, checkpoints, the model
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    advantage_fn = (lambda r: grpo_advantages(r, cfg.scale_rewards)) if cfg.advantage == "grpo" \
        else ADVANTAGES.get(cfg.advantage)  # None for gae: per-token advantages come from the critic
    aggregate = AGGREGATIONS[cfg.loss_agg]
    sampler = None  # the model rollouts sample from (a bf16 copy with precision = "bf16")
    hint = f"Resume with: ponder train --resume --out {out} (same recipe/flags)"
    name = "PPO" if cfg.advantage == "gae" else "GRPO"
    with TrainingLoop(out if is_main() else None, cfg.steps, start, f"{log_prefix}{name}", cfg.progress and is_main(),
                      cfg.tensorboard, cfg.save_every, hint) as loop, rollout_workers(cfg, tok) as pool, \
            verifier_workers(cfg) as verifiers:
        for step in loop:
            t0 = time.perf_counter()
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)  # the critic may learn faster than the policy
            model.eval()
            sampler = rollout_copy(lora.plain_model(model), cfg.sampler_precision, sampler)
            engine = Engine(sampler, tok) if pool is None else pool.publish(sampler, step)  # version = steps done
            phases = Phases()  # the step's breakdown (`step_breakdown`)
            with phases("rollout"):
                rolled = sample_groups(engine, task, cfg, step, learner.pass_history, toolbox, verifiers) if pool is None else \
                    pool.ahead(step, cfg.steps, lambda s: sample_groups(pool, task, cfg, s, learner.pass_history))
            if cfg.difficulty_sampling:
                learner.pass_history = record(learner.pass_history or PassHistory(cfg.difficulty_window), list(rolled.seen))
            metrics = {**rolled.metrics, **(staleness_metrics(rolled.groups, step) if pool is not None else {})}
            if rolled.groups:
                model.train()
                batch = move(build_batch(rolled, engine.pad_id, advantage_fn), device_of(model))
                if learner.value_head is not None:
                    with phases("logprobs"):
                        batch = with_gae(model, learner.value_head, batch, cfg)
                if cfg.max_staleness and batch.behaviour_logp is None:
                    raise ValueError("max_staleness >= 1 needs the sampling log-probs of every rollout "
                                     "(rollout workers record them)")
                t1 = time.perf_counter()
                seen = entropy_forecast(learner.entropy_seen, learner.entropy_trend, cfg.entropy_lookahead)
                bonus = entropy_bonus_weight(learner.entropy_coef, seen, cfg.entropy_aim,
                                             cfg.entropy_coef_gain, cfg.entropy_coef_max) \
                    if cfg.entropy_target else 0.0
                try:
                    metrics.update(update_policy(model, ref_model, opt, batch, cfg, aggregate, learner.value_head,
                                                 bonus, phases))
                except FloatingPointError as e:
                    last = ckpt.latest(ck_root)
                    raise FloatingPointError(
                        f"{e} at step {step + 1}; stopped. Last good checkpoint: "
                        f"{last if last else 'none (no checkpoint was written yet)'}") from None
                metrics["train_seconds"] = time.perf_counter() - t1
                if cfg.entropy_target:
                    metrics.update(entropy_control(learner, cfg, bonus, metrics["entropy"]))
            metrics.update(step_time=time.perf_counter() - t0, lr=lr, peak_rss_gb=peak_rss_gb())
            metrics.update(step_breakdown(phases.seconds, metrics["gen_seconds"], metrics["step_time"]))
            done = step + 1
            if loop.end_step(done, metrics, reward=f"{metrics['reward']:.2f}", acc=f"{metrics['accuracy']:.2f}",
                             think=f"{metrics['think_len_mean']:.0f}") and is_main():
                ckpt.save(ck_root, done, model, tok, learner.state(cfg))
            loop.stop_if_asked(done)
    model.eval()
    if not is_main():
        return out / "model"
    final = save_model(lora.merged(model), tok, out / "model")  # LoRA: adapters folded in
    return final


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder train", description="GRPO on a task (R1-Zero style: no SFT needed); "
                                 "a recipe with kind = \"sft\" runs `ponder sft` instead.")
    ap.add_argument("recipe", nargs="?", help="TOML recipe with RLConfig keys (top level or [train])")
    ap.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    C.add_arguments(ap, RLConfig)
    args = ap.parse_args(argv)
    values = C.load_toml(args.recipe, section="train", known=RLConfig.__dataclass_fields__) if args.recipe else {}
    values.pop("kind", None)
    values.update({f: getattr(args, f) for f in RLConfig.__dataclass_fields__ if getattr(args, f) is not None})
    cfg = C.build(RLConfig, values)
    try:
        path = train(cfg, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    if not is_main():
        return 0
    print(f"trained model: {path}")
    from ponder.rl.doctor import summary_lines
    for line in summary_lines(cfg.out):  # what `ponder doctor` sees in the run, in a few lines
        print(line)
    return 0
