"""Read-only views of a search: frozen snapshots, never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select

from swarmq.engine._common import (
    adapter_config_of,
    config_of,
    last_applied_in_txn,
    layout_of,
    search_in_txn,
)
from swarmq.engine._runtime import Runtime
from swarmq.errors import NotFoundError
from swarmq.storage import (
    Database,
    EvaluationRow,
    IterationRow,
    ParticleRow,
    ParticleStateRow,
    SearchRow,
)
from swarmq.swarm import best_initial_expert
from swarmq.weights import Layout

__all__ = [
    "FinalReport",
    "ScoredPosition",
    "SearchSummary",
    "best_history",
    "final_report",
    "global_best_position",
    "list_searches",
    "search_summary",
    "utility_histories",
]


@dataclass(frozen=True)
class SearchSummary:
    """Where a search stands."""

    id: str
    name: str
    status: str
    stop_reason: str | None
    iteration: int
    max_iterations: int
    n_particles: int
    n_experts: int
    best_utility: float | None
    best_particle: int | None
    best_iteration: int | None
    evaluations_done: int
    evaluations_total: int
    created_at: datetime
    finished_at: datetime | None


def _summary(s: Any, row: SearchRow) -> SearchSummary:
    applied = last_applied_in_txn(s, row.id)
    counts = dict(
        s.execute(
            select(EvaluationRow.status, func.count())
            .where(EvaluationRow.search_id == row.id)
            .group_by(EvaluationRow.status)
        ).all()
    )
    return SearchSummary(
        id=row.id,
        name=row.name,
        status=row.status,
        stop_reason=row.stop_reason,
        iteration=row.current_iteration,
        max_iterations=config_of(row.config_json).search.max_iterations,
        n_particles=row.n_particles,
        n_experts=row.n_experts,
        best_utility=None if applied is None else applied.best_utility,
        best_particle=None if applied is None else applied.best_particle,
        best_iteration=None if applied is None else applied.best_iteration,
        evaluations_done=counts.get("done", 0),
        evaluations_total=sum(counts.values()) - counts.get("skipped", 0),
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def search_summary(db: Database, search_id: str) -> SearchSummary:
    with db.session() as s:
        return _summary(s, search_in_txn(s, search_id))


def list_searches(db: Database) -> list[SearchSummary]:
    with db.session() as s:
        rows = s.scalars(select(SearchRow).order_by(SearchRow.created_at)).all()
        return [_summary(s, r) for r in rows]


def utility_histories(db: Database, search_id: str) -> list[list[float | None]]:
    """``[particle][iteration]`` dev utilities (a skipped evaluation shows the carried value)."""
    with db.session() as s:
        search = search_in_txn(s, search_id)
        rows = s.execute(
            select(ParticleStateRow.particle, ParticleStateRow.iteration, ParticleStateRow.utility)
            .where(ParticleStateRow.search_id == search_id)
            .order_by(ParticleStateRow.iteration, ParticleStateRow.particle)
        ).all()
        out: list[list[float | None]] = [[] for _ in range(search.n_particles)]
        for particle, _iteration, utility in rows:
            out[particle].append(utility)
        return out


def best_history(db: Database, search_id: str) -> list[float]:
    """The global-best utility after each applied iteration."""
    with db.session() as s:
        search_in_txn(s, search_id)
        return [
            u
            for u in s.scalars(
                select(IterationRow.best_utility)
                .where(IterationRow.search_id == search_id, IterationRow.status == "applied")
                .order_by(IterationRow.number)
            )
            if u is not None
        ]


@dataclass(frozen=True)
class ScoredPosition:
    """A position of the search with its dev utility and, once evaluated, its test score."""

    label: str
    particle: int
    iteration: int
    dev: float | None
    test: float | None


@dataclass(frozen=True)
class FinalReport:
    """The paper's final comparison: the best initial expert beside the swarm's global best."""

    best_expert: ScoredPosition
    global_best: ScoredPosition


def final_report(db: Database, search_id: str) -> FinalReport | None:
    """The final comparison, or ``None`` before the first iteration is applied."""
    with db.session() as s:
        search = search_in_txn(s, search_id)
        last = last_applied_in_txn(s, search_id)
        if last is None or last.best_particle is None or last.best_iteration is None:
            return None
        initial = s.execute(
            select(ParticleStateRow.particle, ParticleStateRow.utility)
            .where(
                ParticleStateRow.search_id == search_id,
                ParticleStateRow.iteration == 0,
                ParticleStateRow.particle < search.n_experts,
            )
            .order_by(ParticleStateRow.particle)
        ).all()
        found = best_initial_expert([u for _p, u in initial])
        expert = 0 if found is None else found  # no expert utility yet: the first, unscored
        names = dict(
            s.execute(
                select(ParticleRow.index, ParticleRow.expert_name).where(
                    ParticleRow.search_id == search_id
                )
            ).all()
        )
        tests = {
            (it, p): u
            for it, p, u in s.execute(
                select(
                    EvaluationRow.iteration, EvaluationRow.particle, EvaluationRow.utility
                ).where(
                    EvaluationRow.search_id == search_id,
                    EvaluationRow.split == "test",
                    EvaluationRow.status == "done",
                )
            ).all()
        }
        return FinalReport(
            best_expert=ScoredPosition(
                f"best initial expert ({names.get(expert) or f'particle {expert}'})",
                expert,
                0,
                initial[expert][1],
                tests.get((0, expert)),
            ),
            global_best=ScoredPosition(
                f"global best (particle {last.best_particle}, iteration {last.best_iteration})",
                last.best_particle,
                last.best_iteration,
                last.best_utility,
                tests.get((last.best_iteration, last.best_particle)),
            ),
        )


def global_best_position(
    rt: Runtime, search_id: str
) -> tuple[Layout, np.ndarray, dict[str, Any] | None, dict[str, str]]:
    """The global best's layout, vector (hash-verified), adapter config and provenance."""
    with rt.db.session() as s:
        search = search_in_txn(s, search_id)
        last = last_applied_in_txn(s, search_id)
        if last is None or last.best_hash is None:
            raise NotFoundError(
                f"search {search_id!r} has no evaluated iteration yet; nothing to export"
            )
        info = {
            "swarmq_particle": str(last.best_particle),
            "swarmq_iteration": str(last.best_iteration),
            "swarmq_utility": repr(last.best_utility),
            "swarmq_position_hash": last.best_hash,
            "swarmq_config_hash": search.config_hash,
        }
        layout = layout_of(search.layout_json)
        adapter = adapter_config_of(search.adapter_config_json)
        digest = last.best_hash
    return layout, rt.store.get_vector(digest), adapter, info
