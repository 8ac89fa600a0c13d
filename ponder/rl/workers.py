"""Rollout workers as Ray actors: `ponder train --rollout-workers N [--max-staleness K]`.

The trainer stays in the driver; N actors each hold a copy of the policy and the task,
and run the same `rollout()` as the local loop on a contiguous share of a step's prompts,
with the row seeds of the prompts' global indices -- so a worker's groups are the ones
the local loop would sample from the same weights (tested: `--max-staleness 0` gives the
local loop's metrics and final weights).

- Weights: after each update the driver `publish`es the sampling policy's weights as one
  Ray object, version = steps done. Every rollout call carries the version it must sample
  with (and a reference to its weights), so a call is self-contained: a worker that died
  is restarted by Ray (`max_restarts`) and the call re-issued (`max_task_retries`) gives
  the same groups.
- Staleness: step s samples with version max(0, s - K), in a background thread, while the
  trainer updates on step s - 1 .. s - K. K = 0 is the synchronous loop. The groups carry
  the version that sampled them (`Group.policy_version`); metrics log the lag and, with
  K >= 1, the truncated importance weights (`ponder.rl.offpolicy`) that correct for it.
  With K >= 1 the engine records each sampled token's log-prob (the behaviour policy's) as it
  samples, so neither side runs a log-prob pass for it.

Verifier workers (`--verifier-workers M`) are M more actors, each holding the task, that
verify a contiguous share of a step's completions (`VerifierPool`, a drop-in for
`verify_batch`): the same verdicts in the same order, so the run is the local loop's;
a killed verifier is restarted by Ray and its call re-issued. They serve the local
rollout (rollout workers verify their own samples).

Ray is an extra: `pip install 'ponder[distributed]'`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ponder.core.config import ConfigError
from ponder.rl.distributed import share, world
from ponder.rl.offpolicy import with_behaviour_logprobs
from ponder.rl.rollout import RolloutResult, rollout

INSTALL = "pip install 'ponder[distributed]'"


def import_ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"--rollout-workers needs the Python package 'ray', which is not installed; "
                                  f"install it with: {INSTALL}", name="ray") from None
    return ray


def check_config(cfg) -> None:
    """Combinations the workers refuse, and why (called from `RLConfig.__post_init__`)."""
    if min(cfg.rollout_workers, cfg.max_staleness, cfg.verifier_workers) < 0:
        raise ConfigError(f"rollout_workers, max_staleness and verifier_workers must be >= 0, got "
                          f"{cfg.rollout_workers}, {cfg.max_staleness}, {cfg.verifier_workers}")
    if cfg.verifier_workers and cfg.rollout_workers:
        raise ConfigError(f"verifier_workers = {cfg.verifier_workers} with rollout_workers = {cfg.rollout_workers}: "
                          f"rollout workers verify their own samples; use one or the other")
    if cfg.is_cap < 1:
        raise ConfigError(f"is_cap must be >= 1 (a weight cap below 1 would shrink even on-policy tokens), "
                          f"got {cfg.is_cap}")
    if cfg.max_staleness and not cfg.rollout_workers:
        raise ConfigError(f"max_staleness = {cfg.max_staleness} needs rollout workers to sample ahead of the "
                          f"update: set rollout_workers >= 1 (0 = the local synchronous loop)")
    if cfg.rollout_workers and cfg.lora_rank:
        raise ConfigError("rollout_workers with lora_rank > 0 is not supported yet: workers load full weights")
    if cfg.max_staleness and getattr(cfg, "difficulty_sampling", False):
        raise ConfigError("max_staleness >= 1 with difficulty_sampling: the prompts of a step sampled ahead "
                          "cannot follow the pass rates of the steps not yet trained; use max_staleness = 0")


class RolloutWorker:
    """One process: a copy of the sampling policy, the task, and the local `rollout`."""

    def __init__(self, cfg):
        from ponder.core.config import set_threads
        from ponder.engine.engine import Engine, rollout_copy
        from ponder.models.model import load_model
        from ponder.tasks.spec import make_task
        set_threads(cfg.threads or 1)
        model, tok = load_model(cfg.model, device=cfg.device)
        self.model = rollout_copy(model, cfg.sampler_precision)  # the dtype the trainer samples in
        self.engine = Engine(self.model, tok)
        self.task = make_task(cfg, tok)
        self.pad_id = self.engine.pad_id
        self.with_logprobs = cfg.max_staleness > 0 or cfg.sampler_correction  # the behaviour log-probs, for the IS weights
        self.version: int | None = None

    def pid(self) -> int:
        return os.getpid()

    def rollout(self, weights: list, version: int, examples, n, params, seed, index_offset, max_tokens,
                reward) -> RolloutResult:
        if version != self.version:  # `weights` is [ObjectRef]: fetched only when the version changed
            import ray
            self.model.load_state_dict(ray.get(weights[0]))
            self.version = version
        if self.with_logprobs:  # the engine records each token's log-prob as it samples: no pass of its own
            params = replace(params, logprobs=True)
        out = rollout(self.engine, self.task, examples, n, params, seed, index_offset=index_offset,
                      max_tokens=max_tokens, reward=reward, policy_version=version)
        return with_behaviour_logprobs(out) if self.with_logprobs else out


class RolloutPool:
    """N rollout actors behind the interface `sample_groups` uses (`remote_rollout`, `pad_id`)."""

    def __init__(self, cfg, tok):
        self.ray = ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=cfg.ray_address or None, include_dashboard=False, log_to_driver=False)
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(RolloutWorker)
        self.workers = [actor.remote(cfg) for _ in range(cfg.rollout_workers)]
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.staleness = cfg.max_staleness
        self.published: dict[int, object] = {}  # version -> ObjectRef of its weights
        self.cond = threading.Condition()
        self.ahead_pool = ThreadPoolExecutor(1, thread_name_prefix="rollouts-ahead")
        self.pending: dict = {}

    def publish(self, model, version: int) -> "RolloutPool":
        """Make `model`'s weights the policy of `version` (= steps done); keeps the last K + 1."""
        ref = self.ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        with self.cond:
            self.published[version] = ref
            for old in [v for v in self.published if v < version - self.staleness]:
                del self.published[old]
            self.cond.notify_all()
        return self

    def weights_for(self, step: int) -> tuple[int, object]:
        """(version, weights) step `step` samples with: max(0, step - K), waiting until it is published."""
        version = max(0, step - self.staleness)
        with self.cond:
            self.cond.wait_for(lambda: version in self.published or max(self.published, default=-1) > version)
            version = version if version in self.published else min(v for v in self.published if v > version)
            return version, self.published[version]

    def remote_rollout(self, task, examples, n, params, seed, index_offset: int = 0, max_tokens=None,
                       reward=None, policy_version: int = 0, **_) -> RolloutResult:
        """`rollout` of `examples` split over the workers; `policy_version` is the step."""
        version, ref = self.weights_for(policy_version)
        W, calls = len(self.workers), []
        for r, worker in enumerate(self.workers):
            lo, hi = share(len(examples), W, r)
            if lo < hi:
                calls.append(worker.rollout.remote([ref], version, examples[lo:hi], n, params, seed,
                                                   index_offset + lo, max_tokens[lo:hi] if max_tokens else None,
                                                   reward))
        parts = self.ray.get(calls)
        return RolloutResult([g for p in parts for g in p.groups], sum(p.generated_tokens for p in parts),
                             max(p.seconds for p in parts))  # the workers generate at the same time

    def ahead(self, step: int, total: int, sample):
        """`sample(step)`'s result, with steps step+1 .. step+K already started in the background."""
        for s in range(step, min(step + self.staleness, total - 1) + 1):
            if s not in self.pending:
                self.pending[s] = self.ahead_pool.submit(sample, s)
        return self.pending.pop(step).result()

    def pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        for f in self.pending.values():
            f.cancel()
        self.ahead_pool.shutdown(wait=True, cancel_futures=True)
        for w in self.workers:
            self.ray.kill(w)


class VerifierWorker:
    """One process holding the task (its prompt format too): verifies what it is sent."""

    def __init__(self, cfg):
        from ponder.models.model import load_tokenizer
        from ponder.tasks.spec import make_task
        self.task = make_task(cfg, load_tokenizer(cfg.model))

    def pid(self) -> int:
        return os.getpid()

    def verify(self, completions: list[str], examples) -> list:
        from ponder.verifiers.batch import verify_batch
        return verify_batch(self.task, completions, examples)


class VerifierPool:
    """M verifier actors behind `verify_batch`'s signature: each gets a contiguous share."""

    def __init__(self, cfg):
        self.ray = ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=cfg.ray_address or None, include_dashboard=False, log_to_driver=False)
        actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(VerifierWorker)  # they mostly wait
        self.workers = [actor.remote(cfg) for _ in range(cfg.verifier_workers)]

    def __call__(self, task, completions: list[str], examples) -> list:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        W, calls = len(self.workers), []
        for r, worker in enumerate(self.workers):
            lo, hi = share(len(examples), W, r)
            if lo < hi:
                calls.append(worker.verify.remote(completions[lo:hi], examples[lo:hi]))
        return [v for part in self.ray.get(calls) for v in part]

    def pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)


@contextlib.contextmanager
def verifier_workers(cfg):
    """What verifies the run's completions: its verifier pool, or `verify_batch` (threads in
    this process) when `cfg.verifier_workers` is 0 -- the same signature either way."""
    if not cfg.verifier_workers:
        from ponder.verifiers.batch import verify_batch
        yield verify_batch
        return
    pool = VerifierPool(cfg)
    try:
        yield pool
    finally:
        pool.close()


@contextlib.contextmanager
def rollout_workers(cfg, tok):
    """The pool for the run (None when `cfg.rollout_workers` is 0: the local loop)."""
    if not cfg.rollout_workers:
        yield None
        return
    if world() > 1:
        raise ConfigError("rollout_workers under torchrun is not supported: use one or the other")
    pool = RolloutPool(cfg, tok)
    try:
        yield pool
    finally:
        pool.close()
