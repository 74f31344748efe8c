"""The combination baselines' own arithmetic and choices, free of I/O and of any model.

* :func:`mean_position` and :func:`weighted_position`: the uniform and greedy soups (plain
  means of experts) and LoraHub's combinations (one weight per expert), elementwise over the
  adapter's tensors like the swarm itself, summed in float64 in expert order, then float32, so
  that the audit recomputes them bit for bit;
* :func:`greedy_soup`: Wortsman et al. (2022), "Model soups": experts in order of dev utility,
  each added to the soup if the soup's dev utility does not drop;
* :func:`lorahub_search`: LoraHub (Huang et al., 2023): one weight per expert, searched
  gradient-free on dev by CMA-ES (the ``cmaes`` library), seeded;
* :func:`merge_scales`: the weights tried for the peft merges, chosen on dev.

Each procedure takes an ``evaluate`` callback that returns a dev utility; the caller records
(and, on a rerun, replays) those evaluations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from swarmq.errors import SwarmqError

__all__ = [
    "LORAHUB_BOUND",
    "GreedyStep",
    "LorahubTrial",
    "derived_seed",
    "greedy_soup",
    "lorahub_search",
    "mean_position",
    "merge_scales",
    "weighted_position",
]

#: LoraHub's bound on each expert's weight (its paper searches [-1.5, 1.5]).
LORAHUB_BOUND = 1.5
#: CMA-ES's initial step size: a sixth of the search interval (optuna's default for it).
LORAHUB_SIGMA0 = 2 * LORAHUB_BOUND / 6


def mean_position(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The plain mean of positions: float64 sum in the given order, divided, then float32."""
    if not vectors:
        raise SwarmqError("a soup needs at least one position")
    total = np.sum(np.stack(vectors), axis=0, dtype=np.float64)
    return np.asarray(total / len(vectors), dtype=np.float32)


def weighted_position(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i x_i``: float64 products summed in the given order, then float32."""
    if not vectors or len(vectors) != len(weights):
        raise SwarmqError(f"{len(weights)} weights for {len(vectors)} positions")
    total = np.zeros(vectors[0].shape, dtype=np.float64)
    for w, x in zip(weights, vectors, strict=True):
        total += float(w) * np.asarray(x, dtype=np.float64)
    return np.asarray(total, dtype=np.float32)


def merge_scales(n_experts: int) -> tuple[float, ...]:
    """The common expert weights tried for each peft merge: ``1/n``, 0.5 and 1.

    ``1/n`` averages the experts' updates, 1 adds them (task arithmetic) or keeps the agreeing
    mean (TIES); the best on dev is kept, as the merging papers choose their scale.
    """
    return tuple(sorted({1.0 / n_experts, 0.5, 1.0}))


def derived_seed(seed: int, *labels: object) -> int:
    """A seed for one baseline's random draws, from the search's seed and the baseline's name
    (the same across runs and machines; distinct between baselines)."""
    text = ":".join(str(x) for x in (seed, *labels)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class GreedyStep:
    """One candidate of the greedy soup: ``ingredients`` (expert indices) and its dev utility."""

    trial: int
    candidate: int
    ingredients: tuple[int, ...]
    utility: float
    kept: bool


def greedy_soup(
    order: Sequence[int],
    first_utility: float,
    evaluate: Callable[[int, tuple[int, ...]], float],
) -> tuple[tuple[int, ...], float, list[GreedyStep]]:
    """Wortsman et al.'s greedy soup over experts ``order``-ed by dev utility (best first).

    The soup starts as the best expert (dev utility ``first_utility``, already recorded); each
    next expert is added when the mean of the soup and it scores at least the soup's dev
    utility so far (``evaluate(trial, ingredients)``, trials numbered from 1). Returns the
    ingredients kept, their dev utility and every step.
    """
    if not order:
        raise SwarmqError("a greedy soup needs at least one expert")
    kept = [order[0]]
    best = float(first_utility)
    steps: list[GreedyStep] = []
    for trial, expert in enumerate(order[1:], start=1):
        candidate = (*kept, expert)
        utility = float(evaluate(trial, candidate))
        keep = utility >= best
        steps.append(GreedyStep(trial, expert, candidate, utility, keep))
        if keep:
            kept.append(expert)
            best = utility
    return tuple(kept), best, steps


@dataclass(frozen=True)
class LorahubTrial:
    """One LoraHub candidate: the experts' weights and the dev utility of their combination."""

    trial: int
    weights: tuple[float, ...]
    utility: float


def lorahub_search(
    n_experts: int,
    budget: int,
    seed: int,
    evaluate: Callable[[int, tuple[float, ...]], float],
) -> list[LorahubTrial]:
    """Search one weight per expert in ``[-1.5, 1.5]`` by CMA-ES, ``budget`` dev evaluations.

    The first candidate is the uniform soup (every weight ``1/n``), where CMA-ES's mean also
    starts (step size 0.5); then whole generations of CMA-ES (the ``cmaes`` library, which
    optuna's CMA-ES sampler runs on), the last one cut at the budget. The generator is seeded,
    so given the same dev utilities the candidates are the same, which lets a rerun replay
    recorded evaluations. LoraHub itself starts from all-zero weights (the base model) and
    minimises a loss plus an L1 term with nevergrad; here the search space and the budget are
    LoraHub's, and the dev utility itself is maximised.
    """
    if budget < 1:
        raise SwarmqError(f"a LoraHub search needs at least one dev evaluation, got {budget}")
    from cmaes import CMA

    start = np.full(n_experts, 1.0 / n_experts)
    bounds = np.tile([-LORAHUB_BOUND, LORAHUB_BOUND], (n_experts, 1))
    optimizer = CMA(mean=start, sigma=LORAHUB_SIGMA0, bounds=bounds, seed=seed % 2**32)
    trials = [LorahubTrial(1, tuple(start.tolist()), float(evaluate(1, tuple(start.tolist()))))]
    while len(trials) < budget:
        told: list[tuple[np.ndarray, float]] = []
        for _ in range(optimizer.population_size):
            if len(trials) == budget:
                break
            x = optimizer.ask()
            weights = tuple(float(w) for w in x)
            utility = float(evaluate(len(trials) + 1, weights))
            trials.append(LorahubTrial(len(trials) + 1, weights, utility))
            told.append((x, -utility))  # CMA-ES minimises
        if len(told) == optimizer.population_size:
            optimizer.tell(told)
    return trials
