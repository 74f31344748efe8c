"""A search's record read in a few bulk queries, as arrays: what reports and plots draw from.

A search of 1,000 iterations by 50 particles has 50,000 particle states; reading them as ORM
objects would take longer than drawing every plot, so the columns a report needs come back as
plain tuples and go straight into ``[iteration, particle]`` numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select

from swarmq.config import SearchConfig
from swarmq.engine import config_of, params_of, search_in_txn
from swarmq.reporting._columns import lineage_query
from swarmq.storage import (
    BaselineRow,
    Database,
    EvaluationRow,
    IterationRow,
    ParticleStateRow,
    decode_item_scores,
)
from swarmq.swarm import SwarmParams

__all__ = [
    "BaselineScore",
    "EvaluationTiming",
    "IterationInfo",
    "ParticleInfo",
    "SearchRecord",
    "composition",
    "load_record",
]


@dataclass(frozen=True)
class ParticleInfo:
    """A particle's identity: the expert it started as, or its crossover parents."""

    index: int
    expert_name: str | None
    parent_first: int | None
    parent_second: int | None
    parent_weight: float | None

    def describe(self) -> str:
        """``expert NAME`` or ``w·P1 + (1 − w)·P2`` with the parents' indices."""
        if self.parent_first is None or self.parent_second is None or self.parent_weight is None:
            return f"expert {self.expert_name}" if self.expert_name else "expert"
        w = self.parent_weight
        return f"{w:.3f}·P{self.parent_first} + {1 - w:.3f}·P{self.parent_second}"


@dataclass(frozen=True)
class IterationInfo:
    """One iteration row: step length and the all-time global records after it."""

    number: int
    status: str
    step_length: float | None
    skipped_all: bool
    best_particle: int | None
    best_iteration: int | None
    best_utility: float | None
    worst_particle: int | None
    worst_iteration: int | None
    worst_utility: float | None


@dataclass(frozen=True)
class EvaluationTiming:
    """One finished evaluation: who ran it and how long it took."""

    worker: str
    split: str
    iteration: int
    particle: int
    seconds: float
    finished_at: datetime


@dataclass(frozen=True)
class BaselineScore:
    """A persisted baseline result (see :func:`swarmq.engine.compute_baselines`).

    ``trials`` counts the candidates the baseline evaluated on dev while choosing;
    ``item_scores`` are the result's per-item scores (``None`` when the utility gives none).
    """

    name: str
    split: str
    utility: float
    metrics: dict[str, Any]
    trials: int = 0
    item_scores: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SearchRecord:
    """Everything a report shows, read from the database alone.

    Arrays are indexed ``[iteration, particle]``; a utility not yet known is NaN, an unset
    integer is -1. ``evaluated`` is 1 (evaluated), 0 (skipped by dropout) or -1 (pending).
    """

    id: str
    name: str
    status: str
    stop_reason: str | None
    created_at: datetime
    finished_at: datetime | None
    seed: int
    n_particles: int
    n_experts: int
    config: SearchConfig
    config_json: str
    params: SwarmParams
    particles: tuple[ParticleInfo, ...]
    iterations: tuple[IterationInfo, ...]
    utility: np.ndarray
    best_utility: np.ndarray
    best_iteration: np.ndarray
    evaluated: np.ndarray
    restarted: np.ndarray
    timings: tuple[EvaluationTiming, ...]
    #: Finished test evaluations: ``(iteration, particle) -> utility``.
    tests: dict[tuple[int, int], float]
    baselines: tuple[BaselineScore, ...]
    #: Per-item scores of the finished test evaluations that have them.
    test_items: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @property
    def n_iterations(self) -> int:
        """Number of iterations with particle states (0..n-1)."""
        return int(self.utility.shape[0])

    @property
    def applied(self) -> list[IterationInfo]:
        """The iterations whose bests are final."""
        return [it for it in self.iterations if it.status == "applied"]


def _float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def load_record(db: Database, search_id: str) -> SearchRecord:
    """Read one search's record (a handful of bulk queries, one transaction)."""
    with db.session() as s:
        search = search_in_txn(s, search_id)
        config = config_of(search.config_json)
        particles = tuple(
            ParticleInfo(**row._asdict()) for row in s.execute(lineage_query(search_id)).all()
        )
        iterations = tuple(
            IterationInfo(**row._asdict())
            for row in s.execute(
                select(
                    IterationRow.number,
                    IterationRow.status,
                    IterationRow.step_length,
                    IterationRow.skipped_all,
                    IterationRow.best_particle,
                    IterationRow.best_iteration,
                    IterationRow.best_utility,
                    IterationRow.worst_particle,
                    IterationRow.worst_iteration,
                    IterationRow.worst_utility,
                )
                .where(IterationRow.search_id == search_id)
                .order_by(IterationRow.number)
            ).all()
        )
        rows = s.execute(
            select(
                ParticleStateRow.iteration,
                ParticleStateRow.particle,
                ParticleStateRow.utility,
                ParticleStateRow.best_utility,
                ParticleStateRow.best_iteration,
                ParticleStateRow.evaluated,
                ParticleStateRow.restarted,
            ).where(ParticleStateRow.search_id == search_id)
        ).all()
        evaluations = s.execute(
            select(
                EvaluationRow.worker,
                EvaluationRow.split,
                EvaluationRow.iteration,
                EvaluationRow.particle,
                EvaluationRow.started_at,
                EvaluationRow.finished_at,
                EvaluationRow.utility,
            ).where(EvaluationRow.search_id == search_id, EvaluationRow.status == "done")
        ).all()
        trials = dict(
            s.execute(
                select(BaselineRow.name, func.count())
                .where(
                    BaselineRow.search_id == search_id,
                    BaselineRow.split == "dev",
                    BaselineRow.trial > 0,
                )
                .group_by(BaselineRow.name)
            ).all()
        )
        baselines = tuple(
            BaselineScore(
                name,
                split,
                float(utility),
                dict(metrics or {}),
                int(trials.get(name, 0)),
                None if items is None else decode_item_scores(items),
            )
            for name, split, utility, metrics, items in s.execute(
                select(
                    BaselineRow.name,
                    BaselineRow.split,
                    BaselineRow.utility,
                    BaselineRow.metrics,
                    BaselineRow.item_scores,
                )
                .where(BaselineRow.search_id == search_id, BaselineRow.trial == 0)
                .order_by(BaselineRow.name, BaselineRow.split)
            ).all()
        )
        # Test evaluations are few (the experts, the global best): their item scores are read
        # for the paired intervals; the many dev evaluations' are not.
        test_items = {
            (int(it), int(p)): decode_item_scores(items or b"")
            for it, p, items in s.execute(
                select(
                    EvaluationRow.iteration, EvaluationRow.particle, EvaluationRow.item_scores
                ).where(
                    EvaluationRow.search_id == search_id,
                    EvaluationRow.split == "test",
                    EvaluationRow.status == "done",
                    EvaluationRow.item_scores.is_not(None),
                )
            ).all()
        }
        header = (
            search.id,
            search.name,
            search.status,
            search.stop_reason,
            search.created_at,
            search.finished_at,
            search.seed,
            search.n_particles,
            search.n_experts,
            search.config_json,
        )

    n = header[7]
    t = 1 + max((r[0] for r in rows), default=-1)
    shape = (t, n)
    utility = np.full(shape, np.nan)
    best_utility = np.full(shape, np.nan)
    best_iteration = np.full(shape, -1, dtype=np.int64)
    evaluated = np.full(shape, -1, dtype=np.int8)
    restarted = np.zeros(shape, dtype=bool)
    if rows:
        # Column-wise fill: one vectorised assignment per array instead of 50k Python stores.
        cols = list(zip(*rows, strict=True))
        it_idx = np.asarray(cols[0], dtype=np.int64)
        p_idx = np.asarray(cols[1], dtype=np.int64)
        utility[it_idx, p_idx] = [_float(u) for u in cols[2]]
        best_utility[it_idx, p_idx] = [_float(u) for u in cols[3]]
        best_iteration[it_idx, p_idx] = [-1 if b is None else b for b in cols[4]]
        evaluated[it_idx, p_idx] = [-1 if e is None else int(e) for e in cols[5]]
        restarted[it_idx, p_idx] = [bool(r) for r in cols[6]]

    timings: list[EvaluationTiming] = []
    tests: dict[tuple[int, int], float] = {}
    for worker, split, it, particle, started, finished, value in evaluations:
        if split == "test" and value is not None:
            tests[(it, particle)] = float(value)
        if started is not None and finished is not None:
            timings.append(
                EvaluationTiming(
                    worker or "?",
                    split,
                    it,
                    particle,
                    max(0.0, (finished - started).total_seconds()),
                    finished,
                )
            )
    timings.sort(key=lambda e: e.finished_at)

    return SearchRecord(
        id=header[0],
        name=header[1],
        status=header[2],
        stop_reason=header[3],
        created_at=header[4],
        finished_at=header[5],
        seed=header[6],
        n_particles=n,
        n_experts=header[8],
        config=config,
        config_json=header[9],
        params=params_of(config),
        particles=particles,
        iterations=iterations,
        utility=utility,
        best_utility=best_utility,
        best_iteration=best_iteration,
        evaluated=evaluated,
        restarted=restarted,
        timings=tuple(timings),
        tests=tests,
        baselines=baselines,
        test_items=test_items,
    )


def composition(particles: tuple[ParticleInfo, ...], n_experts: int) -> np.ndarray:
    """``[particle, expert]`` weights: each initial position as a combination of the experts.

    Crossover is linear (``child = w·P1 + (1 − w)·P2``), so every particle of iteration 0 is
    a weighted sum of the experts; weights outside [0, 1] mean extrapolation.
    """
    weights = np.zeros((len(particles), n_experts))
    for p in particles:
        if p.parent_first is None or p.parent_second is None or p.parent_weight is None:
            weights[p.index, p.index] = 1.0
        else:
            w = p.parent_weight
            weights[p.index] = w * weights[p.parent_first] + (1 - w) * weights[p.parent_second]
    return weights
