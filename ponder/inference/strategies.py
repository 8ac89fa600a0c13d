"""Inference-time strategies: turning more samples, or a search, into a better answer.

Selection over a pool of sampled completions (pure functions over answers and scores):
- `best_of_n`: the answer of the highest-scoring sample (verifier or outcome reward model);
- majority and weighted vote: `ponder.core.stats.majority_vote` / `weighted_vote`;
- `adaptive_stop`: adaptive consistency (Aggarwal et al. 2023) — sample in small
  batches and stop once a Beta posterior says the leading answer is the
  majority with enough confidence (`beta_confidence`);
- `allocate`: difficulty-aware allocation — a few probe samples per problem
  estimate its difficulty (how much they disagree) and the remaining samples
  go where the vote is still open (a cheap form of Snell et al.'s
  compute-optimal scaling, with agreement as the difficulty estimate).

Search with a process reward model (`step_search`), as in search-and-learn:
a step is one line of the thinking (the close of the thinking and the answer
are steps too). Beam search keeps the best n/width partial chains and expands
each `width` times; diverse verifier tree search (DVTS) splits the n chains
into n/width independent subtrees that each keep only their best node, so
the tree does not collapse onto one prefix.

Every sampled row draws its own seeded stream (see `ponder.engine`), so a
strategy's samples do not depend on batching: `adaptive_consistency` run live
uses exactly the first k samples of a pool drawn with the same seed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from ponder.engine.engine import Engine, Sample, SamplingParams, row_seed
from ponder.core.stats import majority_vote, weighted_vote
from ponder.core.think import THINK_CLOSE, answer_text


@dataclass(frozen=True)
class Outcome:
    """What a strategy returns for one problem."""
    answer: str | None  # the chosen answer (None: no valid answer)
    samples: int  # completions (or search leaves) the choice was made from
    tokens: int  # generated tokens spent on this problem, including pruned search branches
    scored_tokens: int = 0  # tokens a PRM read to score this problem's candidates (search only)


def extract(sample: Sample) -> str | None:
    """The answer a vote counts: the text after `</think>`, or None."""
    return answer_text(sample.text) or None


# -- selection over a pool ------------------------------------------------------------------------
def best_of_n(answers: list[str | None], scores: list[float]) -> str | None:
    """The valid answer of the highest-scoring sample; ties go to the earliest.

    >>> best_of_n(["3", None, "4"], [0.2, 0.9, 0.5])
    '4'
    """
    if len(answers) != len(scores):
        raise ValueError(f"best_of_n: {len(answers)} answers but {len(scores)} scores")
    best = None
    for a, s in zip(answers, scores):
        if a is not None and a.strip() and (best is None or s > best[1]):
            best = (a, s)
    return best[0] if best else None


def beta_confidence(top: int, second: int) -> float:
    """P(p_top > p_second) when the two leading answers' shares follow Beta(top+1, second+1).

    Adaptive consistency's Beta stopping rule. For integer parameters,
    P(X > 1/2) with X ~ Beta(a, b) equals P(Binomial(a+b-1, 1/2) <= a-1).

    >>> beta_confidence(4, 0)  # 1 - 0.5**5
    0.96875
    >>> beta_confidence(2, 2)
    0.5
    """
    if top < 0 or second < 0:
        raise ValueError(f"beta_confidence: counts must be >= 0, got {top}, {second}")
    a, b = top + 1, second + 1
    n = a + b - 1
    term, cdf = 0.5 ** n, 0.0
    for k in range(a):  # sum_{k<a} C(n, k) / 2^n, built term by term
        cdf += term
        term *= (n - k) / (k + 1)
    return cdf


def vote_confidence(answers: list[str | None]) -> float:
    """`beta_confidence` of the two most common valid answers (0 if there is none)."""
    counts = Counter(a for a in answers if a is not None and a.strip()).most_common(2)
    if not counts:
        return 0.0
    return beta_confidence(counts[0][1], counts[1][1] if len(counts) > 1 else 0)


def adaptive_stop(answers: list[str | None], batch: int, threshold: float, first: int | None = None) -> int:
    """How many of `answers` (in sampling order) adaptive consistency draws before it stops.

    It draws `first` (default `batch`) samples, then `batch` at a time, and
    stops once `vote_confidence` reaches `threshold` or the pool is used up.

    >>> adaptive_stop(["5"] * 16, batch=2, threshold=0.95, first=4)
    4
    >>> adaptive_stop(["5", "6"] * 8, batch=2, threshold=0.95)
    16
    """
    if batch < 1 or not 0 < threshold <= 1:
        raise ValueError(f"adaptive_stop: batch must be >= 1 and threshold in (0, 1], got {batch}, {threshold}")
    k = min(first or batch, len(answers))
    while k < len(answers) and vote_confidence(answers[:k]) < threshold:
        k = min(k + batch, len(answers))
    return k


def adaptive_consistency(engine: Engine, prompts: list[str], params: SamplingParams, seed: int,
                         batch: int = 2, threshold: float = 0.95, max_samples: int = 16,
                         first: int | None = None) -> list[Outcome]:
    """Adaptive consistency run live: each round samples only for the problems still undecided."""
    ids = [engine.encode(p) for p in prompts]
    drawn: list[list[Sample]] = [[] for _ in prompts]
    open_ = list(range(len(prompts)))
    size = first or batch
    while open_:
        size = min(size, max_samples - len(drawn[open_[0]]))
        start = len(drawn[open_[0]])  # undecided problems advance in lockstep
        seeds = [[row_seed(seed, i, start + j) for j in range(size)] for i in open_]
        out = engine.generate_ids([ids[i] for i in open_], size, params, seeds, [params.max_new_tokens] * len(open_))
        for s in out:
            drawn[open_[s.prompt_index]].append(s)
        open_ = [i for i in open_ if len(drawn[i]) < max_samples
                 and vote_confidence([extract(s) for s in drawn[i]]) < threshold]
        size = batch
    return [Outcome(majority_vote([extract(s) for s in d]), len(d), sum(len(s.ids) for s in d)) for d in drawn]


def allocate(probe_answers: list[list[str | None]], extra: int, cap: int) -> list[int]:
    """Extra samples per problem: `extra` in total, in proportion to how much its probes disagree.

    A problem's difficulty estimate is 1 - (share of its probes that give the
    leading answer); unanimous problems get nothing more. Integer shares by
    largest remainder; no problem gets more than `cap` extra; what a cap
    refuses is handed to the others.

    >>> allocate([["1", "1"], ["2", "3"], [None, None]], extra=6, cap=5)
    [0, 2, 4]
    """
    if extra < 0 or cap < 0:
        raise ValueError(f"allocate: extra and cap must be >= 0, got {extra}, {cap}")
    need = []
    for answers in probe_answers:
        valid = [a for a in answers if a is not None and a.strip()]
        top = Counter(valid).most_common(1)[0][1] if valid else 0
        need.append(1.0 - top / max(1, len(answers)))
    out = [0] * len(need)
    left = min(extra, cap * sum(1 for w in need if w > 0))
    while left > 0:
        open_ = [i for i, w in enumerate(need) if w > 0 and out[i] < cap]
        total = sum(need[i] for i in open_)
        shares = {i: left * need[i] / total for i in open_}
        give = {i: min(int(shares[i]), cap - out[i]) for i in open_}
        rest = left - sum(give.values())
        for i in sorted(open_, key=lambda i: (-(shares[i] - int(shares[i])), i)):
            if rest == 0:
                break
            if out[i] + give[i] < cap:
                give[i] += 1
                rest -= 1
        for i, g in give.items():
            out[i] += g
        if sum(give.values()) == 0:
            break
        left -= sum(give.values())
    return out


# -- search with a process reward model ---------------------------------------------------------------
@dataclass
class _Node:
    ids: list[int]  # completion tokens so far
    score: float = 0.0
    done: bool = False


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "big") >> 1


def step_search(engine: Engine, prm, prompts: list[str], n: int, width: int, params: SamplingParams,
                seed: int, diverse: bool = False, max_steps: int = 16, select: str = "weighted") -> list[Outcome]:
    """PRM-guided step-level beam search (`diverse=False`) or DVTS (`diverse=True`).

    `n` chains per problem are split into `groups` (1 for beam search, n/width
    for DVTS); each group keeps `keep` = n/(groups*width) best nodes (DVTS: 1)
    and expands each `width` times per step. A finished chain leaves its
    group's beam and fills one of its `keep` slots, so each group returns
    `keep` leaves. The answer is the PRM-weighted vote over the leaves
    (`select="weighted"`) or the best leaf (`"best"`), scored by the PRM at
    their final step. All problems advance in lockstep: one engine call and
    one PRM pass per step.
    """
    if width < 1 or n % width or n < width:
        raise ValueError(f"step_search: n={n} must be a positive multiple of width={width}")
    if select not in ("weighted", "best"):
        raise ValueError(f"step_search: select must be 'weighted' or 'best', got {select!r}")
    groups = n // width if diverse else 1
    keep = n // (groups * width)
    step_params = SamplingParams(params.max_new_tokens, params.temperature, params.top_p, stop=("\n", THINK_CLOSE))
    prompt_ids = [engine.encode(p) for p in prompts]
    # beams[i][g]: live nodes of group g of problem i; leaves[i][g]: its finished ones
    beams = [[[_Node([])] for _ in range(groups)] for _ in prompts]
    leaves: list[list[list[_Node]]] = [[[] for _ in range(groups)] for _ in prompts]
    tokens, scored = [0] * len(prompts), [0] * len(prompts)
    for step in range(max_steps):
        # Expand: the root gets all n/groups children; later every kept node gets `width`.
        fan = n // groups if step == 0 else width
        if step == max_steps - 1:  # last round: let every chain run to its end
            step_params = SamplingParams(params.max_new_tokens, params.temperature, params.top_p)
        where = [(i, g, node) for i in range(len(prompts)) for g in range(groups) for node in beams[i][g]
                 if len(node.ids) < params.max_new_tokens]
        if not where:
            break
        seeds = [[_seed(seed, i, step, g, k, j) for j in range(fan)] for k, (i, g, _) in enumerate(where)]
        limits = [params.max_new_tokens - len(node.ids) for _, _, node in where]
        out = engine.generate_ids([prompt_ids[i] + node.ids for i, _, node in where], fan, step_params, seeds, limits)
        children = []
        for s in out:
            i, g, parent = where[s.prompt_index]
            tokens[i] += len(s.ids)
            ids = parent.ids + list(s.ids)
            done = s.finish in ("eos", "length") or len(ids) >= params.max_new_tokens
            children.append((i, g, _Node(ids, done=done)))
        eos = engine.eos_id
        scores = prm.score([prompt_ids[i] for i, _, _ in children], [[t for t in c.ids if t != eos] for _, _, c in children])
        fresh = [[[] for _ in range(groups)] for _ in prompts]
        for (i, g, c), sc in zip(children, scores):
            c.score = sc
            scored[i] += len(prompt_ids[i]) + len(c.ids)
            (leaves[i][g] if c.done else fresh[i][g]).append(c)
        for i in range(len(prompts)):
            for g in range(groups):
                room = keep - len(leaves[i][g])
                ranked = sorted(fresh[i][g], key=lambda c: -c.score)
                beams[i][g] = ranked[:max(0, room)]
    results = []
    for i in range(len(prompts)):
        final = [c for g in range(groups) for c in leaves[i][g]]
        answers = [answer_text(engine.tok.decode([t for t in c.ids if t != engine.eos_id],
                                                 skip_special_tokens=True)) or None for c in final]
        weights = [c.score for c in final]
        pick = weighted_vote(answers, weights) if select == "weighted" else best_of_n(answers, weights)
        results.append(Outcome(pick, len(final), tokens[i], scored[i]))
    return results
