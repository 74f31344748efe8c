"""Finding the work a search still needs, from the database alone.

This is what makes a crash harmless: whatever was in flight (a queue in a killed process, a
message lost with a broker) is rebuilt from the rows. Because every task is idempotent,
sending a unit of work that was in fact done is harmless too.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from swarmq.engine._common import search_in_txn
from swarmq.engine._runtime import Runtime
from swarmq.storage import EvaluationRow, IterationRow

__all__ = ["Work", "pending_work", "reopen_search", "send_work"]


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
    killed process left ``running``) go back to ``pending``; a failed search runs again.

    Returns the search's status after reopening.
    """
    with rt.db.session() as s:
        search = search_in_txn(s, search_id, lock=True)
        if search.status == "cancelled":
            return search.status
        states = ["failed", "running"] if reset_running else ["failed"]
        s.execute(
            update(EvaluationRow)
            .where(EvaluationRow.search_id == search_id, EvaluationRow.status.in_(states))
            .values(status="pending")
        )
        if search.status == "failed":
            search.status, search.stop_reason, search.finished_at = "running", None, None
        return search.status


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
        return work


def send_work(rt: Runtime, work: list[Work]) -> None:
    for w in work:
        if w.kind == "evaluate":
            rt.dispatcher.send_evaluation(w.search_id, w.iteration, w.particle, w.split)
        else:
            rt.dispatcher.send_coordination(w.search_id, w.iteration)
