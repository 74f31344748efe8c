"""``swarmq history``: every particle state of a search with the inputs of its update.

One row per (iteration, particle): where the particle was (position and velocity hashes), how
it got there (random factors, coefficients, step length, restart, and the hashes of the x, v,
p, g and g_w the update read), what it scored and its personal best after the iteration, and
who evaluated it, when. The rows are the record itself, flattened; nothing is recomputed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO, Any

from sqlalchemy import select

from swarmq.engine import search_in_txn
from swarmq.errors import NotFoundError
from swarmq.reporting._columns import STATE_COLUMNS
from swarmq.storage import (
    Database,
    EvaluationRow,
    IterationRow,
    ParticleRow,
    ParticleStateRow,
)

__all__ = ["HISTORY_FIELDS", "history_document", "history_rows", "write_csv", "write_json"]

#: Column order of the CSV export (and keys of every JSON row).
HISTORY_FIELDS: tuple[str, ...] = (
    "iteration",
    "particle",
    "position_hash",
    "velocity_hash",
    "restarted",
    "evaluated",
    "utility",
    "best_utility",
    "best_iteration",
    "best_hash",
    "step_length",
    "r_v",
    "r_p",
    "r_g",
    "r_w",
    "a",
    "b",
    "c",
    "d",
    "x",
    "v",
    "p",
    "g",
    "g_worst",
    "initial_velocity",
    "worker",
    "attempts",
    "started_at",
    "finished_at",
    "eval_seconds",
)


def _flatten(state: tuple[Any, ...], evaluation: tuple[Any, ...] | None) -> dict[str, Any]:
    (it, particle, x_hash, v_hash, restarted, update, utility, evaluated, b_hash, b_util, b_it) = (
        state
    )
    u = update or {}
    factors = u.get("factors") or [None] * 4
    coefficients = u.get("coefficients") or [None] * 4
    worker = attempts = started = finished = seconds = None
    if evaluation is not None:
        worker, attempts, started_at, finished_at = evaluation
        started = None if started_at is None else started_at.isoformat()
        finished = None if finished_at is None else finished_at.isoformat()
        if started_at is not None and finished_at is not None:
            seconds = (finished_at - started_at).total_seconds()
    return {
        "iteration": it,
        "particle": particle,
        "position_hash": x_hash,
        "velocity_hash": v_hash,
        "restarted": bool(restarted),
        "evaluated": evaluated,
        "utility": utility,
        "best_utility": b_util,
        "best_iteration": b_it,
        "best_hash": b_hash,
        "step_length": u.get("step_length"),
        "r_v": factors[0],
        "r_p": factors[1],
        "r_g": factors[2],
        "r_w": factors[3],
        "a": coefficients[0],
        "b": coefficients[1],
        "c": coefficients[2],
        "d": coefficients[3],
        "x": u.get("x"),
        "v": u.get("v"),
        "p": u.get("p"),
        "g": u.get("g"),
        "g_worst": u.get("g_worst"),
        "initial_velocity": u.get("initial_velocity"),
        "worker": worker,
        "attempts": attempts,
        "started_at": started,
        "finished_at": finished,
        "eval_seconds": seconds,
    }


def history_rows(
    db: Database, search_id: str, *, particle: int | None = None
) -> Iterator[dict[str, Any]]:
    """The flattened history, ordered by iteration then particle (optionally one particle).

    Rows are produced lazily from one query, so a long search streams to a file.
    """
    with db.session() as s:
        search = search_in_txn(s, search_id)
        if particle is not None and not 0 <= particle < search.n_particles:
            raise NotFoundError(
                f"search {search_id!r} has particles 0..{search.n_particles - 1}, not {particle}"
            )
        ev_query = select(
            EvaluationRow.iteration,
            EvaluationRow.particle,
            EvaluationRow.worker,
            EvaluationRow.attempts,
            EvaluationRow.started_at,
            EvaluationRow.finished_at,
        ).where(EvaluationRow.search_id == search_id, EvaluationRow.split == "dev")
        st_query = (
            select(*STATE_COLUMNS)
            .where(ParticleStateRow.search_id == search_id)
            .order_by(ParticleStateRow.iteration, ParticleStateRow.particle)
        )
        if particle is not None:
            ev_query = ev_query.where(EvaluationRow.particle == particle)
            st_query = st_query.where(ParticleStateRow.particle == particle)
        evaluations = {(r[0], r[1]): tuple(r[2:]) for r in s.execute(ev_query).all()}
        states = s.execute(st_query).all()
    for row in states:
        yield _flatten(tuple(row), evaluations.get((row[0], row[1])))


def history_document(
    db: Database, search_id: str, *, particle: int | None = None
) -> dict[str, Any]:
    """The JSON export: the search's identity and configuration, its particles' lineage, its
    iterations (step length, global records) and every state row."""
    with db.session() as s:
        search = search_in_txn(s, search_id)
        head = {
            "search": search.id,
            "name": search.name,
            "status": search.status,
            "stop_reason": search.stop_reason,
            "seed": search.seed,
            "config_hash": search.config_hash,
            "config": json.loads(search.config_json),
        }
        particles = [
            {
                "particle": r.index,
                "expert_name": r.expert_name,
                "parent_first": r.parent_first,
                "parent_second": r.parent_second,
                "parent_weight": r.parent_weight,
            }
            for r in s.scalars(
                select(ParticleRow)
                .where(ParticleRow.search_id == search_id)
                .order_by(ParticleRow.index)
            )
        ]
        iterations = [
            {
                "iteration": r.number,
                "status": r.status,
                "step_length": r.step_length,
                "skipped_all": r.skipped_all,
                "best": [r.best_particle, r.best_iteration, r.best_utility, r.best_hash],
                "worst": [r.worst_particle, r.worst_iteration, r.worst_utility, r.worst_hash],
            }
            for r in s.scalars(
                select(IterationRow)
                .where(IterationRow.search_id == search_id)
                .order_by(IterationRow.number)
            )
        ]
    if particle is not None:
        particles = [p for p in particles if p["particle"] == particle]
    return head | {
        "particles": particles,
        "iterations": iterations,
        "states": list(history_rows(db, search_id, particle=particle)),
    }


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    """Write rows as CSV with :data:`HISTORY_FIELDS` columns; returns the number of rows."""
    writer = csv.DictWriter(out, fieldnames=list(HISTORY_FIELDS), lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        count += 1
    return count


def write_json(document: dict[str, Any], out: IO[str]) -> None:
    """Write the :func:`history_document` as indented JSON."""
    json.dump(document, out, indent=1)
    out.write("\n")
