"""One evaluation: claim the row, compute the utility, record it exactly once.

The claim and the record are two short transactions around the (long) model evaluation, so no
lock is held while a GPU works. Recording takes the iteration's row lock, so exactly one
evaluation sees itself as the last one of its iteration and enqueues the coordinator; a replay
of a finished evaluation changes nothing.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select

from swarmq.config import SearchConfig
from swarmq.engine._common import (
    adapter_config_of,
    config_of,
    layout_of,
    require_finite,
    search_in_txn,
)
from swarmq.engine._runtime import Runtime
from swarmq.errors import NotFoundError, SwarmqError
from swarmq.storage import EvaluationRow, IterationRow, ParticleStateRow, utcnow
from swarmq.weights import Layout

__all__ = ["EvaluateFn", "Outcome", "run_evaluation"]

FINISHED = ("done", "skipped")


@dataclass(frozen=True)
class Outcome:
    """What an evaluation task did: ``done``, ``duplicate``, ``cancelled`` or ``failed``."""

    status: str
    utility: float | None = None


# (config, adapter_config, layout, vector, split) -> (utility, metrics)
EvaluateFn = Callable[
    [SearchConfig, dict[str, Any] | None, Layout, np.ndarray, str], tuple[float, dict[str, Any]]
]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _evaluation_in_txn(
    session: Any, search_id: str, iteration: int, particle: int, split: str
) -> EvaluationRow:
    row = session.scalars(
        select(EvaluationRow)
        .where(
            EvaluationRow.search_id == search_id,
            EvaluationRow.iteration == iteration,
            EvaluationRow.particle == particle,
            EvaluationRow.split == split,
        )
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFoundError(
            f"search {search_id!r} has no {split} evaluation of particle {particle} "
            f"at iteration {iteration}"
        )
    return row


def run_evaluation(
    rt: Runtime,
    search_id: str,
    iteration: int,
    particle: int,
    split: str = "dev",
    *,
    worker: str | None = None,
    evaluate: EvaluateFn | None = None,
) -> Outcome:
    """Evaluate one particle's position and record the result idempotently."""
    worker = worker or worker_name()
    with rt.db.session() as s:
        ev = _evaluation_in_txn(s, search_id, iteration, particle, split)
        if ev.status in FINISHED:
            return Outcome("duplicate", ev.utility)
        search = search_in_txn(s, search_id)
        if search.status == "cancelled":
            return Outcome("cancelled")
        now = utcnow()
        ev.status, ev.attempts, ev.worker = "running", ev.attempts + 1, worker
        ev.started_at = ev.heartbeat_at = now
        ev.finished_at, ev.error = None, None
        position_hash = ev.position_hash
        config_json, layout_json, adapter_json = (
            search.config_json,
            search.layout_json,
            search.adapter_config_json,
        )

    try:
        config = config_of(config_json)
        layout = layout_of(layout_json)
        vector = rt.store.get_vector(position_hash)
        value, metrics = (evaluate or rt.evaluate)(
            config, adapter_config_of(adapter_json), layout, vector, split
        )
        utility = require_finite(
            value,
            f"utility {config.objective.utility!r} on particle {particle}, iteration {iteration}",
        )
    except BaseException as err:
        _record_failure(rt, search_id, iteration, particle, split, err)
        raise

    coordinate = False
    with rt.db.session() as s:
        it = s.scalars(
            select(IterationRow)
            .where(IterationRow.search_id == search_id, IterationRow.number == iteration)
            .with_for_update()
        ).one()
        ev = _evaluation_in_txn(s, search_id, iteration, particle, split)
        if ev.status in FINISHED:  # another delivery of the same message finished first
            return Outcome("duplicate", ev.utility)
        ev.status, ev.utility, ev.metrics = "done", utility, metrics
        ev.finished_at = utcnow()
        ev.error = None
        if split == "dev":
            state = s.get(ParticleStateRow, (search_id, iteration, particle))
            if state is None:
                raise NotFoundError(f"particle {particle} has no state at iteration {iteration}")
            state.utility, state.evaluated = utility, True
            remaining = s.scalar(
                select(func.count())
                .select_from(EvaluationRow)
                .where(
                    EvaluationRow.search_id == search_id,
                    EvaluationRow.iteration == iteration,
                    EvaluationRow.split == "dev",
                    EvaluationRow.status.not_in(FINISHED),
                )
            )
            coordinate = remaining == 0 and it.status == "evaluating"
    if coordinate:
        rt.dispatcher.send_coordination(search_id, iteration)
    return Outcome("done", utility)


def _record_failure(
    rt: Runtime, search_id: str, iteration: int, particle: int, split: str, err: BaseException
) -> None:
    """Keep the error on the evaluation row; a bad-input error also stops the search.

    A :class:`SwarmqError` (bad data, NaN utility, corrupted artifact) will fail the same way
    on every retry, so the search is marked failed with the reason; other errors (a lost GPU,
    a killed process) leave it running for a retry or ``swarmq resume``.
    """
    message = f"{err.__class__.__name__}: {err}"
    detail = (
        message
        if isinstance(err, SwarmqError)
        else "".join(traceback.format_exception(err))[-4000:]
    )
    try:
        with rt.db.session() as s:
            ev = _evaluation_in_txn(s, search_id, iteration, particle, split)
            if ev.status in FINISHED:
                return
            ev.status, ev.error, ev.finished_at = "failed", detail, utcnow()
            if isinstance(err, SwarmqError):
                search = search_in_txn(s, search_id, lock=True)
                if search.status == "running":
                    search.status = "failed"
                    search.stop_reason = (
                        f"evaluation of particle {particle} at iteration {iteration} "
                        f"({split}) failed: {message}"
                    )
    except SwarmqError:
        pass  # the database itself is gone: the row stays "running" and recovery retries it
