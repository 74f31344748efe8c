"""Small helpers shared by the engine's operations (each runs inside the caller's transaction)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from swarmq.config import SearchConfig
from swarmq.errors import NotFoundError, NumericError, UtilityError
from swarmq.storage import Artifact, ArtifactStore, IterationRow, SearchRow
from swarmq.swarm import (
    SwarmParams,
    UpdateRecord,
    apply_update,
    draw_factors,
    needs_restart,
    update_coefficients,
)
from swarmq.weights import Layout

__all__ = [
    "new_search_id",
    "params_of",
    "put_vectors_in_txn",
    "record_artifacts_in_txn",
    "require_finite",
    "require_storable",
    "search_in_txn",
]


def new_search_id() -> str:
    return uuid.uuid4().hex[:12]


def params_of(config: SearchConfig) -> SwarmParams:
    """The pure algorithm's parameters from a search configuration."""
    s = config.swarm
    return SwarmParams(
        inertia=s.inertia,
        cognitive=s.cognitive,
        social=s.social,
        repel=s.repel,
        step_length=s.step_length,
        step_length_factor=s.step_length_factor,
        min_step_length=s.min_step_length,
        patience=s.patience,
        max_iterations=config.search.max_iterations,
        restart_patience=s.restart_patience,
        random_weights=s.random_weights,
        initial_velocity=s.initial_velocity,
        repel_term=s.repel_term,
        restart=s.restart,
        dropout_k=s.dropout_k,
        dropout_n=s.dropout_n,
    )


@lru_cache(maxsize=64)
def config_of(config_json: str) -> SearchConfig:
    """Parse a recorded configuration once per process."""
    return SearchConfig.from_json(config_json)


@lru_cache(maxsize=64)
def layout_of(layout_json: str) -> Layout:
    return Layout.from_json(layout_json)


def adapter_config_of(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def search_in_txn(session: Session, search_id: str, *, lock: bool = False) -> SearchRow:
    """The search row, or :class:`NotFoundError` naming the id."""
    stmt = select(SearchRow).where(SearchRow.id == search_id)
    if lock:
        # Refresh a row this session already loaded: the lock is what makes its values current.
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    row = session.scalars(stmt).one_or_none()
    if row is None:
        raise NotFoundError(
            f"search {search_id!r} does not exist; `swarmq status` lists the searches"
        )
    return row


def last_applied_in_txn(session: Session, search_id: str) -> IterationRow | None:
    """The search's newest applied iteration (its bests are the search's current ones), or
    ``None`` before the first is applied."""
    return session.scalars(
        select(IterationRow)
        .where(IterationRow.search_id == search_id, IterationRow.status == "applied")
        .order_by(IterationRow.number.desc())
        .limit(1)
    ).one_or_none()


def put_vectors_in_txn(
    session: Session, store: ArtifactStore, vectors: Iterable[tuple[str, np.ndarray]]
) -> list[str]:
    """Write vectors to the store (durably, first) and record them; returns their hashes.

    ``vectors`` yields ``(kind, array)``.
    """
    hashes: list[str] = []
    rows: list[tuple[str, str, int]] = []
    for kind, vec in vectors:
        digest = store.put_vector(vec)
        hashes.append(digest)
        rows.append((digest, kind, int(vec.nbytes)))
    record_artifacts_in_txn(session, rows)
    return hashes


def record_artifacts_in_txn(session: Session, artifacts: Iterable[tuple[str, str, int]]) -> None:
    """Insert ``(hash, kind, nbytes)`` artifact rows, "on conflict do nothing".

    Equal arrays share one artifact, so the same hash may be recorded many times.
    """
    rows: dict[str, dict[str, Any]] = {}
    for digest, kind, nbytes in artifacts:
        rows.setdefault(digest, {"hash": digest, "kind": kind, "nbytes": nbytes})
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    values = list(rows.values())
    if dialect == "postgresql":
        session.execute(pg_insert(Artifact).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite_insert(Artifact).values(values).on_conflict_do_nothing())
    else:  # other backends: check first, then insert
        existing = set(session.scalars(select(Artifact.hash).where(Artifact.hash.in_(rows))))
        session.add_all(Artifact(**v) for v in values if v["hash"] not in existing)


def require_finite(value: float, what: str) -> float:
    """Refuse NaN and infinite utilities: they would poison every comparison of the swarm."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UtilityError(f"{what} returned {value!r}, not a number") from None
    if not math.isfinite(number):
        raise UtilityError(f"{what} returned {number!r}; a utility must be a finite number")
    return number


def require_storable(metrics: Any, what: str) -> None:
    """Refuse metrics the database cannot store as JSON, before anything is written.

    A set or an object is not JSON at all; NaN and infinity are accepted by SQLite's JSON but
    refused by PostgreSQL's, so they are refused here on both: the same search must record the
    same way on either database, and a failed write would leave the evaluation running.
    """
    if not isinstance(metrics, dict):
        raise UtilityError(
            f"{what} returned metrics of type {type(metrics).__name__}; metrics must be a dict "
            "of JSON values (numbers, strings, booleans, None, lists and dicts)"
        )
    try:
        json.dumps(metrics, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise UtilityError(
            f"{what} returned metrics that cannot be stored as JSON ({err}); return finite "
            "numbers, strings, booleans, None, lists and dicts with string keys"
        ) from None


def require_finite_update(
    new_x: np.ndarray, new_v: np.ndarray, particle: int, iteration: int, step: float
) -> None:
    """Refuse an update whose position or velocity holds NaN or infinity.

    A single non-finite value turns every later position into NaN; the utilities of such
    positions are meaningless, and a search that went on would report them as results.
    """
    for what, vector in (("position", new_x), ("velocity", new_v)):
        finite = np.isfinite(vector)
        if finite.all():
            continue
        count = int(vector.size - np.count_nonzero(finite))
        first = int(np.argmin(finite))
        raise NumericError(
            f"the update of particle {particle} producing iteration {iteration} gave a "
            f"non-finite {what} ({count} of {vector.size} values, the first {vector[first]!r} "
            f"at index {first}; step length {step!r}): the weights overflow float32; lower "
            "[swarm] step_length, or check the experts with `swarmq experts check`"
        )


def move_particle(
    store: ArtifactStore,
    state: Any,
    seed: int,
    nxt: int,
    particle: int,
    params: SwarmParams,
    step: float,
    best: tuple[np.ndarray, str | None],
    worst: tuple[np.ndarray, str | None],
    *,
    application: int | None = None,
) -> tuple[np.ndarray, np.ndarray, UpdateRecord]:
    """One particle's step to iteration ``nxt`` (both modes): read its inputs, restart it if
    its personal best is too old, draw the factors, apply the update, refuse a non-finite
    result; returns the new position and velocity and the record of what the step read.

    ``state`` is the particle's recorded state (position, velocity and personal best hashes,
    best iteration); ``best`` and ``worst`` are the global records (vector, hash) it moves by.
    """
    assert state.best_hash is not None and state.best_iteration is not None
    p = store.get_vector(state.best_hash)
    restarted = needs_restart(nxt, state.best_iteration, params)
    if restarted:
        # A restart reads the personal best and a zero velocity (recorded as v None).
        x, v = p, np.zeros_like(p)
        x_hash, v_hash = state.best_hash, None
    else:
        assert state.velocity_hash is not None
        # A particle sitting at its personal best (always at iteration 0) reads it once.
        x = p if state.position_hash == state.best_hash else store.get_vector(state.position_hash)
        v = store.get_vector(state.velocity_hash)
        x_hash, v_hash = state.position_hash, state.velocity_hash
    factors = draw_factors(seed, nxt, particle, params.random_weights)
    coefficients = update_coefficients(factors, params)
    new_x, new_v = apply_update(x, v, p, best[0], worst[0], coefficients, step)
    require_finite_update(new_x, new_v, particle, nxt, step)
    record = UpdateRecord(
        factors=(factors.r_v, factors.r_p, factors.r_g, factors.r_w),
        coefficients=coefficients,
        step_length=step,
        restarted=restarted,
        x=x_hash,
        v=v_hash,
        p=state.best_hash,
        g=best[1],
        g_worst=worst[1],
        application=application,
    )
    return new_x, new_v, record
