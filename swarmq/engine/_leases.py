"""Leases on evaluations: who holds one, whether it is alive, and the attempt caps.

A claimed evaluation records its worker (``host:pid``) and a heartbeat that a thread stamps
with the database's clock (:class:`Heartbeat`); a holder silent for ``heartbeat_timeout``, or a
process of this host that no longer exists, is gone (:func:`holder_gone`), and only then may
another worker take the evaluation. :class:`EvaluationPolicy` carries those times and the
attempt cap that :func:`claim_coordination` applies to coordinations too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update

from swarmq.engine._common import search_in_txn
from swarmq.engine._runtime import Runtime
from swarmq.storage import EvaluationRow, IterationRow, utcnow

__all__ = [
    "FINISHED",
    "STOPPED_BEATING",
    "EvaluationPolicy",
    "Heartbeat",
    "as_utc",
    "claim_coordination",
    "holder_gone",
    "worker_name",
]

FINISHED = ("done", "skipped")
# How the reconciler's note on an evaluation it took back from a silent worker begins.
STOPPED_BEATING = "stopped beating:"
log = logging.getLogger(__name__)


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


def worker_name() -> str:
    """This process as it is recorded on the evaluations it claims: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def holder_gone(ev: EvaluationRow, now: datetime, policy: EvaluationPolicy) -> bool:
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


class Heartbeat:
    """A thread that stamps ``heartbeat_at`` on running evaluations until stopped.

    A failed beat is logged and retried at the next interval, never raised: a slow database
    must not kill an evaluation that is otherwise fine.
    """

    def __init__(
        self, rt: Runtime, evaluation_ids: list[int], worker: str, interval: float | None
    ) -> None:
        self.rt, self.evaluation_ids, self.worker = rt, evaluation_ids, worker
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread = threading.Thread(
                target=self._run,
                name=f"swarmq-heartbeat-{self.evaluation_ids[0]}",
                daemon=True,
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.interval is not None
        wait = self.interval
        lost = False
        while not self._stop.wait(wait):
            try:
                # One statement, its own transaction, stamped by the database's clock.
                clock = utcnow() if self.rt.db.is_sqlite else func.clock_timestamp()
                with self.rt.db.statement() as conn:
                    beat = conn.execute(
                        update(EvaluationRow)
                        .where(
                            EvaluationRow.id.in_(self.evaluation_ids),
                            EvaluationRow.status == "running",
                            EvaluationRow.worker == self.worker,
                        )
                        .values(heartbeat_at=clock)
                    )
                    held = cast(CursorResult[Any], beat).rowcount
            except Exception as err:  # logged, never raised: see the class docstring
                log.warning("heartbeat of evaluations %s failed: %s", self.evaluation_ids, err)
                # Try again soon: once the database is back, the beat must land before the
                # reconciler's next look at it.
                wait = min(self.interval, 0.25)
                continue
            wait = self.interval
            if held < len(self.evaluation_ids) and not lost and not self._stop.is_set():
                # The reconciler took (some of) them back: this worker was silent for the
                # whole heartbeat timeout. Whichever attempt finishes first is recorded; the
                # other finds the row finished and records nothing.
                lost = True
                log.warning(
                    "evaluations %s: lease lost (this worker was silent for heartbeat_timeout)",
                    self.evaluation_ids,
                )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


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
