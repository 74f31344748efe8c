"""The Model Swarms algorithm as pure functions: arrays and numbers in, arrays and numbers out.

Nothing here reads a file, a clock or a global random state: randomness comes from
:func:`swarmq.swarm.generator`, keyed by (seed, purpose, iteration, particle). The numbering of
the algorithm's steps follows the specification (ALGORITHM.md in the project's references):

* iteration 0 evaluates the (expanded) experts; personal bests, global best and global worst
  are set from it;
* iteration t >= 1 first checks the stop rule, then restarts stray particles, then moves every
  particle with the step length lambda_t, then evaluates, then updates the bests;
* lambda_1 = step_length and lambda_{t+1} = max(lambda_t * factor, min_step_length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from swarmq.swarm._params import SwarmParams
from swarmq.swarm._rng import Stream, generator

__all__ = [
    "Best",
    "Factors",
    "Parent",
    "UpdateRecord",
    "apply_update",
    "best_initial_expert",
    "draw_factors",
    "expand_population",
    "improves_personal_best",
    "initial_velocity",
    "needs_restart",
    "select_best",
    "select_worst",
    "should_stop",
    "skipped_evaluations",
    "step_length_at",
    "update_coefficients",
]


@dataclass(frozen=True)
class Parent:
    """How a particle created by crossover came to be: ``w * first + (1 - w) * second``."""

    first: int
    second: int
    weight: float


def expand_population(
    experts: Sequence[np.ndarray], n_particles: int, seed: int
) -> tuple[list[np.ndarray], list[Parent | None]]:
    """Expand n expert positions to ``n_particles`` by crossover (step 1.2).

    For each new particle two distinct parents are drawn uniformly from the list as it stands
    (children can become parents), ``w ~ U(0, 2)`` and ``child = w * P1 + (1 - w) * P2``:
    interpolation when ``w <= 1``, extrapolation beyond. Returns the positions (experts first, in
    their given order) and, per particle, its :class:`Parent` record (``None`` for experts).
    """
    if n_particles < len(experts):
        raise ValueError(f"particles={n_particles} is below the number of experts ({len(experts)})")
    if len(experts) < 2 and n_particles > len(experts):
        raise ValueError("crossover needs at least two experts")
    positions = [np.asarray(e, dtype=np.float32) for e in experts]
    lineage: list[Parent | None] = [None] * len(positions)
    rng = generator(seed, Stream.EXPAND)
    while len(positions) < n_particles:
        first, second = (int(i) for i in rng.choice(len(positions), size=2, replace=False))
        w = float(rng.uniform(0.0, 2.0))
        child = np.float32(w) * positions[first] + np.float32(1.0 - w) * positions[second]
        positions.append(child.astype(np.float32, copy=False))
        lineage.append(Parent(first, second, w))
    return positions, lineage


def initial_velocity(
    mode: str,
    positions: Sequence[np.ndarray],
    particle: int,
    seed: int,
    global_best: np.ndarray | None = None,
) -> np.ndarray:
    """Starting velocity of one particle (step 1.3).

    ``zero``: 0. ``random``: ``x_j - x_i`` for a ``j != i`` drawn from the particle's own stream.
    ``best``: ``g - x_i``; it needs the global best, so it is computed after iteration 0.
    """
    x = positions[particle]
    if mode == "zero":
        return np.zeros_like(x)
    if mode == "random":
        if len(positions) < 2:
            raise ValueError("random starting velocity needs at least two particles")
        rng = generator(seed, Stream.VELOCITY, 0, particle)
        j = int(rng.integers(0, len(positions) - 1))
        if j >= particle:  # draw among the others, uniformly
            j += 1
        return positions[j] - x
    if mode == "best":
        if global_best is None:
            raise ValueError("the 'best' starting velocity needs the global best")
        return global_best - x
    raise ValueError(f"unknown starting velocity mode {mode!r}; use 'random', 'zero' or 'best'")


@dataclass(frozen=True)
class Factors:
    """The random factors r_v, r_p, r_g, r_w of one particle's update."""

    r_v: float
    r_p: float
    r_g: float
    r_w: float


def draw_factors(seed: int, iteration: int, particle: int, random_weights: bool) -> Factors:
    """Draw ``r_v, r_p, r_g, r_w ~ U(0, 1)`` for one update (all 1 without random weights)."""
    if not random_weights:
        return Factors(1.0, 1.0, 1.0, 1.0)
    r = generator(seed, Stream.UPDATE, iteration, particle).random(4)
    return Factors(float(r[0]), float(r[1]), float(r[2]), float(r[3]))


def update_coefficients(factors: Factors, params: SwarmParams) -> tuple[float, float, float, float]:
    """The weights (a, b, c, d) of the velocity update, already divided by C = a + b + c + d."""
    a = factors.r_v * params.inertia
    b = factors.r_p * params.cognitive
    c = factors.r_g * params.social
    d = factors.r_w * params.repel if params.repel_term else 0.0
    total = a + b + c + d
    if total <= 0.0:
        raise ValueError(
            "the update coefficients sum to 0; raise one of inertia/cognitive/social/repel"
        )
    return a / total, b / total, c / total, d / total


def apply_update(
    x: np.ndarray,
    v: np.ndarray,
    p: np.ndarray,
    g: np.ndarray,
    g_worst: np.ndarray,
    coefficients: tuple[float, float, float, float],
    step: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Move one particle (step 2.3); returns the new ``(x, v)``.

    ``v' = (a v + b (p - x) + c (g - x) + d (x - g_w)) / C`` and ``x' = x + lambda v'``, computed
    in float32 with the coefficients pre-divided by C. Written as
    ``v' = a v + b p + c g - d g_w + (d - b - c) x``, which needs no temporary per term.
    """
    a, b, c, d = (np.float32(k) for k in coefficients)
    new_v = np.multiply(v, a, dtype=np.float32)
    new_v += b * p
    new_v += c * g
    new_v -= d * g_worst
    new_v += (d - b - c) * x
    new_x = x + np.float32(step) * new_v
    return new_x, new_v


def step_length_at(iteration: int, params: SwarmParams) -> float:
    """lambda_t, the step length of the update that produces iteration ``t >= 1``.

    Computed by repeated multiplication, as the running update does, so a resumed search
    uses bit-identical step lengths.
    """
    if iteration < 1:
        raise ValueError("iteration 0 is the initial evaluation; it has no step length")
    step = params.step_length
    for _ in range(iteration - 1):
        step = max(step * params.step_length_factor, params.min_step_length)
    return step


def should_stop(best_history: Sequence[float], iteration: int, params: SwarmParams) -> str | None:
    """Whether iteration ``iteration`` should not run (step 2.1); returns the reason or ``None``.

    ``best_history`` holds the global-best utility after each evaluated iteration 0..t-1.
    The search stops when the last ``patience`` values are all equal (and the history is longer
    than ``patience``), or when ``iteration`` exceeds ``max_iterations``.
    """
    if iteration > params.max_iterations:
        return f"reached max_iterations={params.max_iterations}"
    k = params.patience
    if len(best_history) > k and len(set(best_history[-k:])) == 1:
        return f"global best unchanged for the last {k} iterations (patience)"
    return None


def needs_restart(iteration: int, best_iteration: int, params: SwarmParams) -> bool:
    """Whether a particle is restarted before the update that produces ``iteration`` (step 2.2).

    The reference code's rule: a particle whose personal best was first reached at
    ``best_iteration`` is reset (``x = p``, ``v = 0``) when
    ``iteration - best_iteration >= restart_patience * patience``. Before the update that
    produces t, its utility history holds t entries (iterations 0..t-1), and the reference
    restarts when the history's length minus the first index of its best reaches the threshold.
    """
    if not params.restart:
        return False
    return iteration - best_iteration >= params.restart_patience * params.patience


def improves_personal_best(previous: float | None, utility: float | None) -> bool:
    """Step 2.5: whether ``utility`` replaces a particle's personal best of ``previous``.

    Only a strict improvement does: a tie keeps the earlier position (and its age, which the
    restart rule reads). A skipped evaluation (``None``) never does.
    """
    return utility is not None and previous is not None and utility > previous


def best_initial_expert(utilities: Sequence[float | None]) -> int | None:
    """The best initial expert: the highest iteration-0 utility among the experts.

    The lowest index wins among equal maxima; a missing (``None``) or NaN utility takes no part.
    ``None`` when no expert has a utility yet.
    """
    best: int | None = None
    for i, u in enumerate(utilities):
        if u is None or math.isnan(u):
            continue
        if best is None or u > utilities[best]:  # type: ignore[operator]
            best = i
    return best


@dataclass(frozen=True)
class UpdateRecord:
    """What one particle's update read and drew, as the record keeps it (``update`` column).

    ``factors`` are ``[r_v, r_p, r_g, r_w]``, ``coefficients`` ``[a, b, c, d]``; ``x``, ``v``,
    ``p``, ``g`` and ``g_worst`` are the hashes of the vectors read (``v`` None after a restart,
    which reads a zero velocity). ``application`` numbers the result an asynchronous search
    applied before this move. :meth:`to_json` is the stored form; the audit and the history
    read it back with :meth:`from_json`.
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "factors",
        "coefficients",
        "step_length",
        "restarted",
        "x",
        "v",
        "p",
        "g",
        "g_worst",
    )

    factors: tuple[float, float, float, float]
    coefficients: tuple[float, float, float, float]
    step_length: float
    restarted: bool
    x: str | None
    v: str | None
    p: str | None
    g: str | None
    g_worst: str | None
    application: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON values (lists for the four-number groups)."""
        out: dict[str, Any] = {
            "factors": list(self.factors),
            "coefficients": list(self.coefficients),
            "step_length": self.step_length,
            "restarted": self.restarted,
            "x": self.x,
            "v": self.v,
            "p": self.p,
            "g": self.g,
            "g_worst": self.g_worst,
        }
        if self.application is not None:
            out["application"] = self.application
        return out

    @classmethod
    def from_json(cls, data: Any) -> UpdateRecord:
        """Read a stored record back; :class:`ValueError` names what is missing or malformed."""
        if not isinstance(data, dict) or any(k not in data for k in cls.FIELDS):
            raise ValueError(f"an update record needs {', '.join(cls.FIELDS)}; got {data!r}")
        groups = []
        for key in ("factors", "coefficients"):
            value = data[key]
            if not isinstance(value, list) or len(value) != 4:
                raise ValueError(f"update record {key} must be four numbers, got {value!r}")
            groups.append(tuple(float(k) for k in value))
        return cls(
            factors=groups[0],  # type: ignore[arg-type]
            coefficients=groups[1],  # type: ignore[arg-type]
            step_length=float(data["step_length"]),
            restarted=bool(data["restarted"]),
            x=data["x"],
            v=data["v"],
            p=data["p"],
            g=data["g"],
            g_worst=data["g_worst"],
            application=data.get("application"),
        )


@dataclass(frozen=True)
class Best:
    """A global record: the particle and iteration where it was evaluated, and its utility."""

    particle: int
    iteration: int
    utility: float


def select_best(
    current: Best | None, utilities: Sequence[float | None], iteration: int
) -> Best | None:
    """Global best after an iteration (step 2.5): the first particle reaching a new maximum.

    ``None`` utilities (skipped evaluations) take no part. The record changes only when the
    iteration's maximum strictly beats it; among equal maxima the lowest particle index wins.
    """
    best = current
    for i, u in enumerate(utilities):
        if u is not None and (best is None or u > best.utility):
            best = Best(i, iteration, u)
    return best


def select_worst(
    current: Best | None, utilities: Sequence[float | None], iteration: int
) -> Best | None:
    """Global worst after an iteration: the first particle reaching a new strict minimum."""
    worst = current
    for i, u in enumerate(utilities):
        if u is not None and (worst is None or u < worst.utility):
            worst = Best(i, iteration, u)
    return worst


def skipped_evaluations(
    seed: int, iteration: int, n_particles: int, params: SwarmParams
) -> list[bool]:
    """Which particles skip their evaluation at ``iteration`` (dropout-K and dropout-N).

    Dropout-K skips the whole iteration with probability K; otherwise each particle is skipped
    with probability N. The initial evaluation (iteration 0) is never skipped.
    """
    if iteration == 0 or (params.dropout_k == 0.0 and params.dropout_n == 0.0):
        return [False] * n_particles
    if generator(seed, Stream.DROPOUT_ITERATION, iteration).random() < params.dropout_k:
        return [True] * n_particles
    return [
        bool(generator(seed, Stream.DROPOUT_PARTICLE, iteration, i).random() < params.dropout_n)
        for i in range(n_particles)
    ]
