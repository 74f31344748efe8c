"""SQLAlchemy 2 ORM models: the durable record of every search.

The database is the source of truth. Large arrays (positions, velocities, personal bests) live
in the artifact store; rows hold their sha256 hashes. Uniqueness constraints make every write
idempotent: a replayed task finds its row and does nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApplicationRow",
    "Artifact",
    "Base",
    "BaselineRow",
    "DatabaseIdentityRow",
    "EvaluationRow",
    "IterationRow",
    "ParticleRow",
    "ParticleStateRow",
    "SearchRow",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class DatabaseIdentityRow(Base):
    """The database's identity: one random id, made by the migration that creates the table.

    Task messages carry it so that a worker started on another database refuses them back to
    the queue rather than drop them (see :mod:`swarmq.execution.tasks`).
    """

    __tablename__ = "database_identity"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SearchRow(Base):
    """One search: its frozen configuration, weight-space layout and status.

    ``group_id`` ties the searches of one search file run over several seeds (``swarmq run
    --seeds``); a group holds one search per seed (a unique constraint), so that a rerun of the
    command continues the group instead of starting its seeds again.
    """

    __tablename__ = "searches"
    # A unique index, not a table constraint: SQLite adds an index in place, whereas a new
    # constraint would rebuild the table (and cascade-delete every child row on the way).
    __table_args__ = (Index("uq_search_group_seed", "group_id", "seed", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # running | completed | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), index=True)
    stop_reason: Mapped[str | None] = mapped_column(Text)
    config_json: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    n_particles: Mapped[int] = mapped_column(Integer)
    n_experts: Mapped[int] = mapped_column(Integer)
    layout_json: Mapped[str] = mapped_column(Text)
    adapter_config_json: Mapped[str | None] = mapped_column(Text)
    current_iteration: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]
    group_id: Mapped[str | None] = mapped_column(String(64))


class ParticleRow(Base):
    """A particle's identity: the expert it started as, or its crossover parents."""

    __tablename__ = "particles"

    search_id: Mapped[str] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    expert_name: Mapped[str | None] = mapped_column(String(500))
    parent_first: Mapped[int | None] = mapped_column(Integer)
    parent_second: Mapped[int | None] = mapped_column(Integer)
    parent_weight: Mapped[float | None] = mapped_column(Float)


class IterationRow(Base):
    """One synchronous iteration. ``status`` is ``evaluating`` until the coordinator applies it.

    The global best/worst columns hold the all-time records *after* this iteration's
    evaluations; they are written by the coordinator in the same transaction that creates the
    next iteration, so an iteration is applied exactly once.
    """

    __tablename__ = "iterations"

    search_id: Mapped[str] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # evaluating | applied
    step_length: Mapped[float | None] = mapped_column(Float)  # lambda that produced it; None at 0
    skipped_all: Mapped[bool] = mapped_column(Boolean, default=False)
    best_particle: Mapped[int | None] = mapped_column(Integer)
    best_iteration: Mapped[int | None] = mapped_column(Integer)
    best_utility: Mapped[float | None] = mapped_column(Float)
    best_hash: Mapped[str | None] = mapped_column(String(64))
    worst_particle: Mapped[int | None] = mapped_column(Integer)
    worst_iteration: Mapped[int | None] = mapped_column(Integer)
    worst_utility: Mapped[float | None] = mapped_column(Float)
    worst_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None]
    # Coordinations of this iteration started (capped like evaluation attempts).
    coordination_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ParticleStateRow(Base):
    """Particle ``particle`` at iteration ``iteration``: where it was, how it got there, its bests.

    ``velocity_hash`` is the velocity that produced this position (at iteration 0: the
    starting velocity). ``update`` records the inputs of that update (random factors,
    coefficients, step length, restart, hashes read) so the history can be recomputed.
    The personal-best columns are the record after this iteration's evaluation.
    """

    __tablename__ = "particle_states"
    __table_args__ = (
        ForeignKeyConstraint(
            ["search_id", "iteration"],
            ["iterations.search_id", "iterations.number"],
            ondelete="CASCADE",
        ),
    )

    search_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True)
    particle: Mapped[int] = mapped_column(Integer, primary_key=True)
    position_hash: Mapped[str] = mapped_column(String(64))
    velocity_hash: Mapped[str | None] = mapped_column(String(64))
    restarted: Mapped[bool] = mapped_column(Boolean, default=False)
    update: Mapped[dict[str, Any] | None]
    utility: Mapped[float | None] = mapped_column(Float)
    evaluated: Mapped[bool | None] = mapped_column(Boolean)  # False: skipped by dropout
    best_hash: Mapped[str | None] = mapped_column(String(64))
    best_utility: Mapped[float | None] = mapped_column(Float)
    best_iteration: Mapped[int | None] = mapped_column(Integer)


class EvaluationRow(Base):
    """One evaluation of one particle's position on one split: the unit of work of a worker."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("search_id", "iteration", "particle", "split", name="uq_evaluation"),
        Index("ix_evaluations_search_status", "search_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    iteration: Mapped[int] = mapped_column(Integer)
    particle: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(8))  # dev | test
    position_hash: Mapped[str] = mapped_column(String(64))
    # pending | running | done | failed | skipped
    status: Mapped[str] = mapped_column(String(16))
    utility: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # When a message for it was last sent again (resume, reconciler, retry); None: at creation.
    dispatched_at: Mapped[datetime | None]
    # One score per example (swarmq.storage.encode_item_scores); deferred: loaded only when read.
    item_scores: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


class Artifact(Base):
    """A content-addressed array in the artifact store, by the sha256 of its file."""

    __tablename__ = "artifacts"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # position | velocity
    nbytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BaselineRow(Base):
    """One evaluation of a baseline of the final table (``swarmq baselines``): a position that
    is no particle's (a soup, a merge, a LoraHub combination) or a top-k ensemble, on one split.

    ``trial`` 0 is the baseline's result on that split, the score the final table shows.
    Baselines that choose on dev (greedy soup, the merges' scale, LoraHub) also record every
    candidate they evaluated on dev as trials 1, 2, ...; their dev result (trial 0) repeats the
    chosen trial's evaluation, named in ``metrics["chosen_trial"]``.

    ``position_hash`` is the evaluated position when there is one; ``metrics`` says how the
    score was reached (weights, ingredients, members, tie-break, per-example answers of an
    ensemble); ``item_scores`` holds one score per example, as on ``evaluations``.
    """

    __tablename__ = "baselines"
    __table_args__ = (UniqueConstraint("search_id", "name", "split", "trial", name="uq_baseline"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))  # uniform_soup | greedy_soup | ties | ...
    split: Mapped[str] = mapped_column(String(8))  # dev | test
    trial: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    utility: Mapped[float] = mapped_column(Float)
    position_hash: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None]
    worker: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    item_scores: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


class ApplicationRow(Base):
    """One applied evaluation of an asynchronous search (``[swarm] mode = "asynchronous"``).

    ``seq`` numbers the applications of a search 0, 1, 2, ... in the order they were made: the
    order the audit replays. Each one applied the dev evaluation of ``particle`` at its own
    iteration ``iteration`` (its personal best is on that particle state), left the global
    best and worst as recorded here, and, when ``moved``, created the particle's state at
    ``iteration + 1`` from them. ``stop_reason`` is set on the application at which the stop
    rule fired; later ones only apply the evaluations still in flight.

    Applications are made in the transaction that records the evaluation, under the search's
    row lock, so numbering is gap-free; the unique constraint on (search, iteration, particle)
    keeps a re-delivered result from being applied twice.
    """

    __tablename__ = "applications"
    __table_args__ = (
        UniqueConstraint("search_id", "iteration", "particle", name="uq_application"),
    )

    search_id: Mapped[str] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    iteration: Mapped[int] = mapped_column(Integer)
    particle: Mapped[int] = mapped_column(Integer)
    utility: Mapped[float] = mapped_column(Float)
    best_particle: Mapped[int] = mapped_column(Integer)
    best_iteration: Mapped[int] = mapped_column(Integer)
    best_utility: Mapped[float] = mapped_column(Float)
    best_hash: Mapped[str] = mapped_column(String(64))
    worst_particle: Mapped[int] = mapped_column(Integer)
    worst_iteration: Mapped[int] = mapped_column(Integer)
    worst_utility: Mapped[float] = mapped_column(Float)
    worst_hash: Mapped[str] = mapped_column(String(64))
    moved: Mapped[bool] = mapped_column(Boolean)
    stop_reason: Mapped[str | None] = mapped_column(Text)
    applied_at: Mapped[datetime] = mapped_column(default=utcnow)
