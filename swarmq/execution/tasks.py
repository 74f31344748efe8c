"""Celery tasks: thin wrappers that call the engine with the process's runtime.

Their keyword arguments (``search_id``, ``iteration``, ``particle``, ``split``) are what Flower
shows; the dispatcher adds a short ``search=… iteration=… particle=…`` representation.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject

from swarmq.engine import (
    claim_coordination,
    coordinate_iteration,
    current_runtime,
    fail_coordination,
    run_evaluation,
)
from swarmq.engine import reconcile as reconcile_searches
from swarmq.execution._app import COORDINATOR_QUEUE, EVALUATE_QUEUE, app
from swarmq.execution._context import current_policy, worker_settings

__all__ = ["coordinate", "evaluate", "reconcile"]

log = logging.getLogger(__name__)


_refused_once = False


def _require_own_database(task: Task, database: str | None) -> None:
    """Refuse a message whose work is recorded in another database than this worker's.

    Such a worker finds none of the message's rows: failing the task would acknowledge the
    message, and the work would be lost. The message goes back to the queue instead (for a
    worker of the right database), this worker stops taking messages (it would refuse every
    one), and one error in its log says why. A message without an identity (sent by an older
    version, or the embedded mode) is taken as before.
    """
    global _refused_once
    if database is None:
        return
    rt = current_runtime()
    own = rt.db.identity()
    if database == own:
        return
    hostname = task.request.hostname
    if not _refused_once:
        _refused_once = True
        log.error(
            "worker %s is on database %s (identity %s), but this message's work is recorded in "
            "the database of identity %s: the message goes back to the queue for a worker of "
            "that database, and this worker stops taking messages; start it with the --db of "
            "the database the searches are recorded in",
            hostname,
            rt.db.describe(),
            own,
            database,
        )
    if hostname:
        for queue in (EVALUATE_QUEUE, COORDINATOR_QUEUE):
            task.app.control.cancel_consumer(queue, destination=[hostname], reply=False)
    raise Reject(f"database {database} is not this worker's ({own})", requeue=True)


@app.task(name="swarmq.evaluate", bind=True)
def evaluate(
    self: Task,
    search_id: str,
    iteration: int,
    particle: int,
    split: str = "dev",
    database: str | None = None,
) -> dict[str, Any]:
    """Evaluate one particle's position at one iteration on one split, exactly once; with
    ``[objective] particles_per_batch`` > 1, also pending companions of the same iteration.
    ``database``: the identity of the database the work is recorded in."""
    _require_own_database(self, database)
    outcome = run_evaluation(
        current_runtime(), search_id, iteration, particle, split, policy=current_policy()
    )
    if outcome.status not in ("done", "duplicate"):
        log.info(
            "evaluation search=%s iteration=%s particle=%s split=%s: %s",
            search_id,
            iteration,
            particle,
            split,
            outcome.status,
        )
    # batch: the other particles this task claimed and evaluated with its own (Flower shows
    # it as the task's result; their own messages then find them done).
    return {"status": outcome.status, "utility": outcome.utility, "batch": list(outcome.batch)}


@app.task(name="swarmq.coordinate", bind=True)
def coordinate(
    self: Task, search_id: str, iteration: int, database: str | None = None
) -> dict[str, Any]:
    """Apply an iteration whose evaluations are all in; a repeated call is a no-op."""
    _require_own_database(self, database)
    rt = current_runtime()
    # In a worker, count the attempt first: a coordination that kills its process is
    # redelivered, and the cap must stop that loop (the embedded mode has no redelivery).
    if worker_settings() is not None and not claim_coordination(
        rt, search_id, iteration, current_policy()
    ):
        log.error("coordination search=%s iteration=%s given up", search_id, iteration)
        return {"status": "failed", "next_iteration": None, "reason": "attempts exhausted"}
    try:
        result = coordinate_iteration(rt, search_id, iteration)
    except Exception as err:
        if fail_coordination(rt, search_id, iteration, err):
            log.error(
                "coordination search=%s iteration=%s failed the search: %s",
                search_id,
                iteration,
                err,
            )
        raise
    return {
        "status": result.status,
        "next_iteration": result.next_iteration,
        "reason": result.reason,
    }


@app.task(name="swarmq.reconcile")
def reconcile(startup: bool = False) -> dict[str, Any]:
    """Send again the work whose message was lost or whose worker stopped beating.

    ``startup`` (the coordinator's first pass) gives no grace: a coordinator killed in the
    middle of a coordination left its message unacknowledged in the broker, and waiting for
    the broker's visibility timeout would stall the search for an hour.
    """
    from swarmq.execution._dispatch import broker_view

    settings = worker_settings()
    if settings is None:
        return {"status": "skipped", "reason": "not a distributed worker"}
    report = reconcile_searches(
        current_runtime(),
        broker=broker_view(app, unacked_grace=settings.dispatch_grace),
        heartbeat_timeout=settings.heartbeat_timeout,
        dispatch_grace=0.0 if startup else settings.dispatch_grace,
    )
    if report.work:
        log.warning("reconciler sent again: %s", report.describe())
    return {
        "revived": len(report.revived),
        "redispatched": len(report.redispatched),
        "coordinations": len(report.coordinations),
    }
