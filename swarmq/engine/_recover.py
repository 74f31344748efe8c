"""Finding the work a search still needs, from the database alone.

This is what makes a crash harmless: whatever was in flight (a queue in a killed process, a
message lost with a broker) is rebuilt from the rows. Because every task is idempotent,
sending a unit of work that was in fact done is harmless too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from swarmq.engine._asynchronous import is_asynchronous, unapplied
from swarmq.engine._common import search_in_txn
from swarmq.engine._runtime import Runtime
from swarmq.errors import SwarmqError
from swarmq.storage import Database, EvaluationRow, IterationRow, utcnow

__all__ = [
    "Work",
    "cancel_search",
    "mark_dispatched",
    "pending_work",
    "reopen_search",
    "send_work",
]


@dataclass(frozen=True)
class Work:
    """One message to send: an evaluation (``particle`` and ``split`` set) or a coordination."""

    kind: str  # evaluate | coordinate
    search_id: str
    iteration: int
    particle: int = -1
    split: str = "dev"


def reopen_search(rt: Runtime, search_id: str, *, reset_running: bool) -> str:
    """Prepare a search for ``resume``: failed evaluations (and, in embedded mode, the ones a
    killed process left ``running``) go back to ``pending``; a failed or cancelled search runs
    again.

    Resuming is a person's decision to try again, so the reopened evaluations start a fresh
    count of attempts (the cap of the distributed mode stops automatic retries, not people).
    In the distributed mode ``reset_running`` is false: a running evaluation may be alive on
    a worker; the reconciler decides from its heartbeat. Returns the search's status after.
    """
    with rt.db.session() as s:
        search = search_in_txn(s, search_id, lock=True)
        states = ["failed", "running"] if reset_running else ["failed"]
        s.execute(
            update(EvaluationRow)
            .where(EvaluationRow.search_id == search_id, EvaluationRow.status.in_(states))
            .values(status="pending", attempts=0, worker=None, dispatched_at=utcnow())
        )
        # The coordinations' cap too: a search failed by it would otherwise fail again at once.
        s.execute(
            update(IterationRow)
            .where(IterationRow.search_id == search_id, IterationRow.status == "evaluating")
            .values(coordination_attempts=0)
        )
        if search.status in ("failed", "cancelled"):
            search.status, search.stop_reason, search.finished_at = "running", None, None
        return search.status


def cancel_search(db: Database, search_id: str) -> str:
    """Stop a running (or failed) search; returns its status before.

    Nothing is interrupted: evaluations already running finish and are recorded, queued ones
    find the search cancelled and do nothing, and the coordinator applies no further
    iteration. ``swarmq resume`` continues a cancelled search.
    """
    with db.session() as s:
        search = search_in_txn(s, search_id, lock=True)
        before = search.status
        if before == "completed":
            raise SwarmqError(f"search {search_id!r} is already completed; nothing to cancel")
        if before != "cancelled":
            search.status, search.finished_at = "cancelled", utcnow()
            search.stop_reason = "cancelled by the user" + (
                f" (it had failed: {search.stop_reason})" if before == "failed" else ""
            )
        return before


def mark_dispatched(db: Database, work: Iterable[Work]) -> None:
    """Record that messages for these evaluations were just sent (see the reconciler's grace)."""
    keys = [(w.search_id, w.iteration, w.particle, w.split) for w in work if w.kind == "evaluate"]
    if not keys:
        return
    now = utcnow()
    with db.session() as s:
        for search_id, iteration, particle, split in keys:
            s.execute(
                update(EvaluationRow)
                .where(
                    EvaluationRow.search_id == search_id,
                    EvaluationRow.iteration == iteration,
                    EvaluationRow.particle == particle,
                    EvaluationRow.split == split,
                    EvaluationRow.status == "pending",
                )
                .values(dispatched_at=now)
            )


def pending_work(rt: Runtime, search_id: str) -> list[Work]:
    """The messages that move the search on from where the database says it is."""
    with rt.db.session() as s:
        search = search_in_txn(s, search_id)
        if search.status in ("cancelled", "failed"):
            return []
        evals = s.execute(
            select(EvaluationRow.iteration, EvaluationRow.particle, EvaluationRow.split)
            .where(EvaluationRow.search_id == search_id, EvaluationRow.status == "pending")
            .order_by(EvaluationRow.split, EvaluationRow.iteration, EvaluationRow.particle)
        ).all()
        work = [Work("evaluate", search_id, it, p, split) for it, p, split in evals]
        if search.status == "running":
            it = s.scalars(
                select(IterationRow)
                .where(IterationRow.search_id == search_id)
                .order_by(IterationRow.number.desc())
                .limit(1)
            ).one()
            open_dev = [w for w in work if w.split == "dev" and w.iteration == it.number]
            running = s.scalar(
                select(EvaluationRow.id)
                .where(
                    EvaluationRow.search_id == search_id,
                    EvaluationRow.iteration == it.number,
                    EvaluationRow.split == "dev",
                    EvaluationRow.status == "running",
                )
                .limit(1)
            )
            if it.status == "evaluating" and not open_dev and running is None:
                work.append(Work("coordinate", search_id, it.number))
            elif is_asynchronous(search.config_json) and _unapplied(s, search_id):
                # Results recorded while the search was cancelled or failed: a coordination
                # applies them (see swarmq.engine._asynchronous).
                work.append(Work("coordinate", search_id, it.number))
        return work


def _unapplied(s: Session, search_id: str) -> bool:
    """Whether an asynchronous search has a recorded dev result that is not applied."""
    return s.execute(unapplied(search_id).limit(1)).first() is not None


def send_work(rt: Runtime, work: list[Work]) -> None:
    """Send each unit of work through the runtime's dispatcher, in order."""
    for w in work:
        if w.kind == "evaluate":
            rt.dispatcher.send_evaluation(w.search_id, w.iteration, w.particle, w.split)
        else:
            rt.dispatcher.send_coordination(w.search_id, w.iteration)
