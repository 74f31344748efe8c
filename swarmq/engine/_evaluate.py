"""One evaluation: claim the row, compute the utility, record it exactly once.

The claim and the record are two short transactions around the (long) model evaluation, so no
lock is held while a GPU works. Recording takes the iteration's row lock, so exactly one
evaluation sees itself as the last one of its iteration and enqueues the coordinator; a replay
of a finished evaluation changes nothing.

Distributed workers add three rules (:class:`EvaluationPolicy`): every claim counts as an
attempt and the evaluation is given up, failing its search with the reason, once
``max_attempts`` claims did not finish it; a running evaluation writes a heartbeat, and a
second delivery of it is dropped while that heartbeat is fresh (its holder is alive) instead of
running it twice; a transient error puts the evaluation back to ``pending`` and sends it again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

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

__all__ = [
    "EvaluateFn",
    "EvaluationPolicy",
    "Outcome",
    "claim_coordination",
    "run_evaluation",
    "worker_name",
]

FINISHED = ("done", "skipped")
# How the reconciler's note on an evaluation it took back from a silent worker begins.
STOPPED_BEATING = "stopped beating:"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What an evaluation task did.

    ``done``; or a no-op: ``duplicate`` (already finished), ``cancelled``, ``inactive`` (the
    search failed), ``busy`` (a live worker holds it); or ``failed`` (given up after
    ``max_attempts``).
    """

    status: str
    utility: float | None = None


@dataclass(frozen=True)
class EvaluationPolicy:
    """How a worker treats a delivery (the defaults are the embedded mode's).

    ``heartbeat_interval`` None starts no heartbeat thread; ``retry_transient`` sends an
    evaluation that failed with an error other than :class:`SwarmqError` again (until
    ``max_attempts``) instead of leaving it failed for ``swarmq resume``.
    """

    max_attempts: int = 3
    heartbeat_interval: float | None = None
    heartbeat_timeout: float = 120.0
    retry_transient: bool = False


# (config, adapter_config, layout, vector, split) -> (utility, metrics)
EvaluateFn = Callable[
    [SearchConfig, dict[str, Any] | None, Layout, np.ndarray, str], tuple[float, dict[str, Any]]
]


def worker_name() -> str:
    """This process as it is recorded on the evaluations it claims: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _holder_gone(ev: EvaluationRow, now: datetime, policy: EvaluationPolicy) -> bool:
    """Whether the worker recorded on a running evaluation is known to be dead.

    Its heartbeat stopped for ``heartbeat_timeout``, or it was a process of this host that no
    longer exists (Celery redelivers the message of a killed pool process at once, usually to
    the same host: no need to wait for the timeout then).
    """
    beat = ev.heartbeat_at or ev.started_at
    if beat is None or (now - as_utc(beat)).total_seconds() > policy.heartbeat_timeout:
        return True
    host, _, pid = (ev.worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True  # this very process claimed it before and did not finish: a retry
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


class _Heartbeat:
    """A thread that stamps ``heartbeat_at`` on a running evaluation until stopped.

    A failed beat is logged and retried at the next interval, never raised: a slow database
    must not kill an evaluation that is otherwise fine.
    """

    def __init__(self, rt: Runtime, evaluation_id: int, worker: str, interval: float | None):
        self.rt, self.evaluation_id, self.worker = rt, evaluation_id, worker
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self._thread = threading.Thread(
                target=self._run, name=f"swarmq-heartbeat-{self.evaluation_id}", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                with self.rt.db.session() as s:
                    s.execute(
                        update(EvaluationRow)
                        .where(
                            EvaluationRow.id == self.evaluation_id,
                            EvaluationRow.status == "running",
                            EvaluationRow.worker == self.worker,
                        )
                        .values(heartbeat_at=utcnow())
                    )
            except Exception as err:  # logged, never raised: see the class docstring
                log.warning("heartbeat of evaluation %s failed: %s", self.evaluation_id, err)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


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
    policy: EvaluationPolicy | None = None,
) -> Outcome:
    """Evaluate one particle's position and record the result idempotently.

    Errors of the evaluation propagate after they are recorded (see :func:`_record_failure`).
    """
    worker = worker or worker_name()
    policy = policy or EvaluationPolicy()
    with rt.db.session() as s:
        ev = _evaluation_in_txn(s, search_id, iteration, particle, split)
        if ev.status in FINISHED:
            return Outcome("duplicate", ev.utility)
        search = search_in_txn(s, search_id)
        now = utcnow()
        if search.status in ("cancelled", "failed"):
            if ev.status == "running" and _holder_gone(ev, now, policy):
                ev.status, ev.worker = "pending", None  # nobody works on it any more
            return Outcome("cancelled" if search.status == "cancelled" else "inactive")
        if ev.status == "running" and not _holder_gone(ev, now, policy):
            # A second message for work a live worker holds (a reconciler race, a redelivery):
            # running it again would only burn a GPU. If the holder dies, its heartbeat stops
            # and the reconciler sends the evaluation again.
            return Outcome("busy")
        if ev.attempts >= policy.max_attempts:
            _give_up_in_txn(s, ev, search_id, iteration, particle, split, policy, now)
            return Outcome("failed")
        ev.status, ev.attempts, ev.worker = "running", ev.attempts + 1, worker
        ev.started_at = ev.heartbeat_at = now
        ev.finished_at, ev.error = None, None
        evaluation_id, attempts = ev.id, ev.attempts
        position_hash = ev.position_hash
        config_json, layout_json, adapter_json = (
            search.config_json,
            search.layout_json,
            search.adapter_config_json,
        )

    try:
        with _Heartbeat(rt, evaluation_id, worker, policy.heartbeat_interval):
            config = config_of(config_json)
            layout = layout_of(layout_json)
            vector = rt.store.get_vector(position_hash)
            value, metrics = (evaluate or rt.evaluate)(
                config, adapter_config_of(adapter_json), layout, vector, split
            )
            utility = require_finite(
                value,
                f"utility {config.objective.utility!r} on particle {particle}, "
                f"iteration {iteration}",
            )
    except BaseException as err:
        retry = _record_failure(rt, search_id, iteration, particle, split, err, policy, attempts)
        if retry:
            rt.dispatcher.send_evaluation(search_id, iteration, particle, split)
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


def _give_up_in_txn(
    s: Any,
    ev: EvaluationRow,
    search_id: str,
    iteration: int,
    particle: int,
    split: str,
    policy: EvaluationPolicy,
    now: datetime,
) -> None:
    """The attempt cap: fail the evaluation and its search, saying why."""
    last = (ev.error or "").strip().splitlines()
    if last and not last[0].startswith(STOPPED_BEATING):
        cause = f"the last error was: {last[-1][:500]}"
    else:
        cause = (
            "the last attempt stopped without recording a result: its process was killed "
            "(out of memory, a crash, a hard time limit) or its machine was lost"
        )
    reason = (
        f"evaluation of particle {particle} at iteration {iteration} ({split}) was given up "
        f"after {ev.attempts} attempts (max_attempts = {policy.max_attempts}); {cause}"
    )
    ev.status, ev.finished_at = "failed", now
    ev.error = reason if not ev.error else f"{reason}\n\n{ev.error}"
    search = search_in_txn(s, search_id, lock=True)
    if search.status == "running":
        search.status, search.stop_reason, search.finished_at = "failed", reason, now


def _record_failure(
    rt: Runtime,
    search_id: str,
    iteration: int,
    particle: int,
    split: str,
    err: BaseException,
    policy: EvaluationPolicy,
    attempts: int,
) -> bool:
    """Keep the error on the evaluation row; returns whether the evaluation should be re-sent.

    A :class:`SwarmqError` (bad data, NaN utility, corrupted artifact) will fail the same way
    on every retry, so the search is marked failed with the reason. Other errors (a lost GPU,
    out of memory, a soft time limit) are transient: with ``policy.retry_transient`` the
    evaluation goes back to ``pending`` and is sent again until ``max_attempts`` claims were
    made, then the search fails naming the cap; without it (the embedded mode) the evaluation
    stays failed and the search running, for ``swarmq resume``.
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
                return False
            now = utcnow()
            if isinstance(err, SwarmqError):
                ev.status, ev.error, ev.finished_at = "failed", detail, now
                search = search_in_txn(s, search_id, lock=True)
                if search.status == "running":
                    search.status = "failed"
                    search.stop_reason = (
                        f"evaluation of particle {particle} at iteration {iteration} "
                        f"({split}) failed: {message}"
                    )
                return False
            if not policy.retry_transient:
                ev.status, ev.error, ev.finished_at = "failed", detail, now
                return False
            ev.error = detail
            if attempts >= policy.max_attempts:
                _give_up_in_txn(s, ev, search_id, iteration, particle, split, policy, now)
                return False
            ev.status, ev.worker, ev.dispatched_at = "pending", None, now
            return True
    except SwarmqError:
        # The database itself is gone: the row stays "running", its heartbeat stops and the
        # reconciler (or resume) sends it again.
        return False


def claim_coordination(
    rt: Runtime, search_id: str, iteration: int, policy: EvaluationPolicy | None = None
) -> bool:
    """Count one attempt at coordinating ``iteration``; past the cap, fail the search instead.

    A coordination that kills its worker (out of memory on large adapters) is redelivered like
    an evaluation; this keeps it from looping forever. Returns whether to go on with the
    coordination (true for an iteration that is already applied: that run is a no-op anyway).
    """
    policy = policy or EvaluationPolicy()
    with rt.db.session() as s:
        it = s.scalars(
            select(IterationRow)
            .where(IterationRow.search_id == search_id, IterationRow.number == iteration)
            .with_for_update()
        ).one_or_none()
        if it is None or it.status != "evaluating":
            return True
        search = search_in_txn(s, search_id, lock=True)
        if search.status != "running":
            return True
        if it.coordination_attempts >= policy.max_attempts:
            reason = (
                f"coordination of iteration {iteration} was given up after "
                f"{it.coordination_attempts} attempts (max_attempts = {policy.max_attempts}): "
                "none of them applied it (an error, or its worker killed: out of memory, a "
                "hard time limit); see the coordinator's log"
            )
            search.status, search.stop_reason, search.finished_at = "failed", reason, utcnow()
            return False
        it.coordination_attempts += 1
        return True
