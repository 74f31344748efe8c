"""The reconciler: find work whose message is gone, and send it again, from the database alone.

Three things can leave a search waiting forever in the distributed mode, and each is visible
in the rows:

- an evaluation ``running`` whose heartbeat stopped: its worker or machine died (a killed pool
  process is redelivered by Celery at once, but a lost machine's message only comes back after
  the broker's visibility timeout, hours later) -> back to ``pending`` and sent again, its
  attempts kept so the cap still applies;
- an evaluation ``pending`` whose message is not in the broker (a broker restarted without
  persistence, a client killed between its commit and its send) -> sent again;
- an iteration whose dev evaluations are all finished but which is not applied (the
  coordination message was lost) -> a coordination is sent (a second one is a no-op).

A live evaluation (fresh heartbeat) is never touched, and a pending one is sent again only when
the broker says it holds no message for it, or (for a broker that cannot list its messages)
when it holds no evaluation message at all; both only after a grace period since the last
dispatch, because a message is sent just after its row commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Select, func, select, update

from swarmq.engine._leases import FINISHED, STOPPED_BEATING, as_utc
from swarmq.engine._recover import Work, send_work
from swarmq.engine._runtime import Runtime
from swarmq.storage import (
    Database,
    EvaluationRow,
    IterationRow,
    ParticleStateRow,
    SearchRow,
    database_now,
    utcnow,
)

__all__ = [
    "Activity",
    "BrokerView",
    "EvaluationKey",
    "ParticleActivity",
    "ReconcileReport",
    "busy_workers",
    "reconcile",
    "search_activity",
]

# (search_id, iteration, particle, split)
EvaluationKey = tuple[str, int, int, str]


class BrokerView(Protocol):
    """What the broker can say about the evaluation messages it holds."""

    def queued_evaluations(self) -> set[EvaluationKey] | None:
        """The evaluations with a message in the broker (waiting, or delivered and not yet
        acknowledged); None when the broker cannot list its messages (RabbitMQ)."""

    def evaluation_queue_empty(self) -> bool | None:
        """Whether no evaluation message waits in the broker; None when unknown."""


@dataclass(frozen=True)
class ReconcileReport:
    """What one pass sent again, by reason."""

    revived: list[Work] = field(default_factory=list)  # running, heartbeat stopped
    redispatched: list[Work] = field(default_factory=list)  # pending, message missing
    coordinations: list[Work] = field(default_factory=list)  # complete iteration not applied

    @property
    def work(self) -> list[Work]:
        return [*self.revived, *self.redispatched, *self.coordinations]

    def describe(self) -> str:
        return (
            f"{len(self.revived)} evaluation(s) whose worker stopped beating, "
            f"{len(self.redispatched)} whose message was lost, "
            f"{len(self.coordinations)} coordination(s)"
        )


def _key(ev: EvaluationRow) -> EvaluationKey:
    return (ev.search_id, ev.iteration, ev.particle, ev.split)


def _rowcount(session: Any, statement: Any) -> int:
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def _work(ev: EvaluationRow) -> Work:
    return Work("evaluate", ev.search_id, ev.iteration, ev.particle, ev.split)


def reconcile(
    rt: Runtime,
    *,
    broker: BrokerView | None,
    heartbeat_timeout: float,
    dispatch_grace: float,
    search_id: str | None = None,
    lost_if_unknown: bool = False,
    now: datetime | None = None,
) -> ReconcileReport:
    """One pass over the active searches (or one search): send again what was lost.

    ``broker`` None, or a broker that can say nothing, makes missing messages undecidable:
    pending evaluations are then left alone unless ``lost_if_unknown`` (``swarmq resume``,
    where a duplicate message is the lesser evil: a duplicate is a cheap no-op).
    """
    if now is None:
        # The database's clock: the one the claims and heartbeats were stamped with.
        with rt.db.session() as s:
            now = database_now(s)
    stale_before = now - timedelta(seconds=heartbeat_timeout)
    grace_before = now - timedelta(seconds=dispatch_grace)
    active = select(SearchRow.id).where(SearchRow.status.in_(("running", "completed")))
    if search_id is not None:
        active = active.where(SearchRow.id == search_id)

    revived: list[Work] = []
    with rt.db.session() as s:
        open_evals = list(
            s.scalars(
                select(EvaluationRow).where(
                    EvaluationRow.search_id.in_(active),
                    EvaluationRow.status.in_(("pending", "running")),
                )
            )
        )
        # A failed or cancelled search sends nothing, but its evaluations whose worker died
        # should not show as running forever: they are nobody's (resume sends them).
        stopped = select(SearchRow.id).where(SearchRow.status.in_(("failed", "cancelled")))
        if search_id is not None:
            stopped = stopped.where(SearchRow.id == search_id)
        s.execute(
            update(EvaluationRow)
            .where(
                EvaluationRow.search_id.in_(stopped),
                EvaluationRow.status == "running",
                func.coalesce(EvaluationRow.heartbeat_at, EvaluationRow.started_at) < stale_before,
            )
            .values(status="pending", worker=None)
        )
    for ev in open_evals:
        if ev.status != "running":
            continue
        beat = ev.heartbeat_at or ev.started_at
        if beat is not None and as_utc(beat) >= stale_before:
            continue
        with rt.db.session() as s:
            # Conditional on the same staleness: a heartbeat that lands meanwhile wins.
            changed = _rowcount(
                s,
                update(EvaluationRow)
                .where(
                    EvaluationRow.id == ev.id,
                    EvaluationRow.status == "running",
                    func.coalesce(EvaluationRow.heartbeat_at, EvaluationRow.started_at)
                    < stale_before,
                )
                .values(
                    status="pending",
                    worker=None,
                    dispatched_at=now,
                    error=f"{STOPPED_BEATING} worker {ev.worker}, last heartbeat "
                    f"{as_utc(beat).isoformat() if beat else 'never'}; sent again",
                ),
            )
        if changed:
            revived.append(_work(ev))

    old_pending = [
        ev
        for ev in open_evals
        if ev.status == "pending" and as_utc(ev.dispatched_at or ev.created_at) <= grace_before
    ]
    lost: list[EvaluationRow] = []
    if old_pending:
        listed = broker.queued_evaluations() if broker is not None else None
        if listed is not None:
            lost = [ev for ev in old_pending if _key(ev) not in listed]
        else:
            empty = broker.evaluation_queue_empty() if broker is not None else None
            if empty or (empty is None and lost_if_unknown):
                lost = old_pending
    redispatched: list[Work] = []
    if lost:
        with rt.db.session() as s:
            for ev in lost:
                changed = _rowcount(
                    s,
                    update(EvaluationRow)
                    .where(EvaluationRow.id == ev.id, EvaluationRow.status == "pending")
                    .values(dispatched_at=now),
                )
                if changed:
                    redispatched.append(_work(ev))

    coordinations = _lost_coordinations(rt.db, active, grace_before)
    report = ReconcileReport(revived, redispatched, coordinations)
    send_work(rt, report.work)
    return report


def _lost_coordinations(db: Database, active: Select[str], grace_before: datetime) -> list[Work]:
    """Running searches whose latest iteration is complete but not applied."""
    work: list[Work] = []
    with db.session() as s:
        latest = (
            select(IterationRow.search_id, func.max(IterationRow.number).label("number"))
            .join(SearchRow, SearchRow.id == IterationRow.search_id)
            .where(SearchRow.status == "running", IterationRow.search_id.in_(active))
            .group_by(IterationRow.search_id)
            .subquery()
        )
        rows = s.execute(
            select(IterationRow).join(
                latest,
                (IterationRow.search_id == latest.c.search_id)
                & (IterationRow.number == latest.c.number),
            )
        ).scalars()
        for it in rows:
            if it.status != "evaluating":
                continue
            unfinished, last_finish = s.execute(
                select(
                    func.count().filter(EvaluationRow.status.not_in(FINISHED)),
                    func.max(EvaluationRow.finished_at),
                ).where(
                    EvaluationRow.search_id == it.search_id,
                    EvaluationRow.iteration == it.number,
                    EvaluationRow.split == "dev",
                )
            ).one()
            if unfinished:
                continue
            # The last evaluation sent a coordination when it finished: give it time to run.
            if as_utc(last_finish or it.created_at) > grace_before:
                continue
            work.append(Work("coordinate", it.search_id, it.number))
    return work


# --- activity: what `swarmq watch` and `swarmq status` show -----------------------------------


@dataclass(frozen=True)
class ParticleActivity:
    """One particle at the search's current iteration."""

    particle: int
    status: str  # of its dev evaluation: pending | running | done | skipped | failed
    utility: float | None
    best_utility: float | None  # its personal best so far
    attempts: int
    worker: str | None
    running_for: float | None  # seconds since the claim, while running
    error: str | None


@dataclass(frozen=True)
class Activity:
    """A live view of one search: its current iteration and who works on it."""

    search_id: str
    iteration: int
    counts: dict[str, int]  # evaluation status -> count, over the whole search
    particles: list[ParticleActivity]
    workers: list[str]  # workers with a live evaluation of this search


def busy_workers(db: Database, heartbeat_timeout: float, *, now: datetime | None = None) -> int:
    """How many distinct workers hold a running evaluation with a fresh heartbeat (all searches)."""
    since = (now or utcnow()) - timedelta(seconds=heartbeat_timeout)
    with db.session() as s:
        return int(
            s.scalar(
                select(func.count(func.distinct(EvaluationRow.worker))).where(
                    EvaluationRow.status == "running", EvaluationRow.heartbeat_at >= since
                )
            )
            or 0
        )


def search_activity(
    db: Database, search_id: str, heartbeat_timeout: float, *, now: datetime | None = None
) -> Activity:
    """The current iteration's evaluations, per particle, with their workers."""
    from swarmq.engine._common import search_in_txn

    now = now or utcnow()
    since = now - timedelta(seconds=heartbeat_timeout)
    with db.session() as s:
        search = search_in_txn(s, search_id)
        iteration = search.current_iteration
        counts = {
            str(k): int(v)
            for k, v in s.execute(
                select(EvaluationRow.status, func.count())
                .where(EvaluationRow.search_id == search_id)
                .group_by(EvaluationRow.status)
            ).all()
        }
        evals = {
            ev.particle: ev
            for ev in s.scalars(
                select(EvaluationRow).where(
                    EvaluationRow.search_id == search_id,
                    EvaluationRow.iteration == iteration,
                    EvaluationRow.split == "dev",
                )
            )
        }
        # Personal bests are written when an iteration is applied: read the latest ones.
        best: dict[int, float | None] = {}
        for particle, utility in s.execute(
            select(ParticleStateRow.particle, ParticleStateRow.best_utility)
            .where(
                ParticleStateRow.search_id == search_id,
                ParticleStateRow.best_utility.is_not(None),
            )
            .order_by(ParticleStateRow.iteration)
        ):
            best[particle] = utility
        particles = []
        for i in range(search.n_particles):
            ev = evals.get(i)
            running = ev is not None and ev.status == "running"
            particles.append(
                ParticleActivity(
                    particle=i,
                    status="-" if ev is None else ev.status,
                    utility=None if ev is None else ev.utility,
                    best_utility=best.get(i),
                    attempts=0 if ev is None else ev.attempts,
                    worker=None if ev is None else ev.worker,
                    running_for=(
                        (now - as_utc(ev.started_at)).total_seconds()
                        if running and ev is not None and ev.started_at is not None
                        else None
                    ),
                    error=None if ev is None else ev.error,
                )
            )
        workers = sorted(
            {
                str(w)
                for w in s.scalars(
                    select(EvaluationRow.worker).where(
                        EvaluationRow.search_id == search_id,
                        EvaluationRow.status == "running",
                        EvaluationRow.heartbeat_at >= since,
                    )
                )
                if w
            }
        )
    return Activity(search_id, iteration, counts, particles, workers)
