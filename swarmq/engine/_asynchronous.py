"""The asynchronous swarm: apply each evaluation as soon as it is recorded.

With ``[swarm] mode = "asynchronous"`` there is no iteration barrier. The transaction that
records a dev evaluation also *applies* it, under the search's row lock: it numbers the
application (``applications.seq``), updates the particle's personal best and the global best
and worst, takes the stop decision when a block of N applications completes, and, unless the
search is stopping or its budget is spent, moves that particle to its next iteration with the
global best and worst as they stand now, and creates its pending evaluation. The caller sends
the returned work after the commit; a crash before that leaves pending rows, which ``resume``
and the reconciler send again.

A particle's iteration is its own count of moves, so particles drift apart; an
:class:`~swarmq.storage.IterationRow` is created for each iteration some particle reaches (it
carries the step length), is ``applied`` from the start (nothing waits for it), and the newest
one carries the current global records, so that status, reports and export read them as for
a synchronous search. The authoritative record is the ``applications`` table, which
``swarmq audit`` replays in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from swarmq.engine._common import (
    config_of,
    move_particle,
    params_of,
    put_vectors_in_txn,
    search_in_txn,
)
from swarmq.engine._runtime import Runtime
from swarmq.errors import NotFoundError
from swarmq.storage import (
    ApplicationRow,
    EvaluationRow,
    IterationRow,
    ParticleStateRow,
    SearchRow,
    utcnow,
)
from swarmq.swarm import (
    Best,
    SwarmParams,
    asynchronous_stop,
    improves_best,
    improves_personal_best,
    improves_worst,
    may_move,
    step_length_at,
)

__all__ = [
    "FollowUp",
    "apply_pending",
    "apply_recorded_in_txn",
    "is_asynchronous",
    "send_follow_ups",
    "unapplied",
]

ASYNCHRONOUS = "asynchronous"


@dataclass(frozen=True)
class FollowUp:
    """An evaluation to send once the applying transaction has committed."""

    iteration: int
    particle: int
    split: str


def is_asynchronous(config_json: str) -> bool:
    """Whether a recorded configuration runs the asynchronous swarm."""
    return config_of(config_json).swarm.mode == ASYNCHRONOUS


@dataclass
class _Standing:
    """Where the search stands before the next application (read once per transaction)."""

    seq: int  # the next application's number
    best: Best | None
    best_hash: str | None
    worst: Best | None
    worst_hash: str | None
    stopping: str | None  # the stop reason already decided, if any
    created: int  # dev evaluations created so far
    block_bests: list[float]  # global best after applications N, 2N, ...


def _standing(s: Session, search: SearchRow) -> _Standing:
    n = search.n_particles
    last = s.scalars(
        select(ApplicationRow)
        .where(ApplicationRow.search_id == search.id)
        .order_by(ApplicationRow.seq.desc())
        .limit(1)
    ).one_or_none()
    stopping = s.scalars(
        select(ApplicationRow.stop_reason)
        .where(ApplicationRow.search_id == search.id, ApplicationRow.stop_reason.is_not(None))
        .order_by(ApplicationRow.seq)
        .limit(1)
    ).one_or_none()
    created = s.scalar(
        select(func.count())
        .select_from(ParticleStateRow)
        .where(ParticleStateRow.search_id == search.id)
    )
    block_bests = [
        float(u)
        for u in s.scalars(
            select(ApplicationRow.best_utility)
            .where(ApplicationRow.search_id == search.id, ApplicationRow.seq % n == n - 1)
            .order_by(ApplicationRow.seq)
        )
    ]
    if last is None:
        return _Standing(0, None, None, None, None, stopping, int(created or 0), block_bests)
    return _Standing(
        seq=last.seq + 1,
        best=Best(last.best_particle, last.best_iteration, last.best_utility),
        best_hash=last.best_hash,
        worst=Best(last.worst_particle, last.worst_iteration, last.worst_utility),
        worst_hash=last.worst_hash,
        stopping=stopping,
        created=int(created or 0),
        block_bests=block_bests,
    )


def apply_recorded_in_txn(
    s: Session, rt: Runtime, search: SearchRow, keys: list[tuple[int, int]]
) -> list[FollowUp]:
    """Apply the recorded dev evaluations ``keys`` (``(iteration, particle)``), in that order.

    The caller holds the search's row lock and has recorded the evaluations' utilities on
    their particle states. A key already applied (a re-delivered result) is skipped. Returns
    the evaluations to send after the commit.
    """
    if search.status != "running" or not keys:
        return []  # a cancelled or failed search applies its results when resumed
    params = params_of(config_of(search.config_json))
    applied: set[tuple[int, int]] = {
        (int(t), int(p))
        for t, p in s.execute(
            select(ApplicationRow.iteration, ApplicationRow.particle).where(
                ApplicationRow.search_id == search.id,
                ApplicationRow.particle.in_(sorted({p for _t, p in keys})),
            )
        ).all()
    }
    standing = _standing(s, search)
    follow: list[FollowUp] = []
    for iteration, particle in keys:
        if (iteration, particle) in applied:
            continue
        follow += _apply_one(s, rt, search, params, standing, iteration, particle)
        applied.add((iteration, particle))
    return follow


def _apply_one(
    s: Session,
    rt: Runtime,
    search: SearchRow,
    params: SwarmParams,
    standing: _Standing,
    iteration: int,
    particle: int,
) -> list[FollowUp]:
    n = search.n_particles
    state = s.get(ParticleStateRow, (search.id, iteration, particle))
    if state is None or state.utility is None or not state.evaluated:
        raise NotFoundError(
            f"particle {particle} has no evaluated state at iteration {iteration} to apply"
        )
    u = float(state.utility)
    # Personal best: strict improvement over the particle's previous record.
    if iteration == 0:
        state.best_hash, state.best_utility, state.best_iteration = state.position_hash, u, 0
    else:
        before = s.get(ParticleStateRow, (search.id, iteration - 1, particle))
        assert before is not None and before.best_utility is not None
        state.best_hash, state.best_utility, state.best_iteration = (
            before.best_hash,
            before.best_utility,
            before.best_iteration,
        )
        if improves_personal_best(before.best_utility, u):
            state.best_hash, state.best_utility, state.best_iteration = (
                state.position_hash,
                u,
                iteration,
            )
    # The global records, as they stand after this result.
    if improves_best(standing.best, u):
        standing.best, standing.best_hash = Best(particle, iteration, u), state.position_hash
    if improves_worst(standing.worst, u):
        standing.worst, standing.worst_hash = Best(particle, iteration, u), state.position_hash
    assert standing.best is not None and standing.worst is not None
    assert standing.best_hash is not None and standing.worst_hash is not None
    seq = standing.seq
    standing.seq += 1
    if (seq + 1) % n == 0:
        standing.block_bests.append(standing.best.utility)
    reason = None
    if standing.stopping is None:
        reason = asynchronous_stop(standing.block_bests, seq + 1, n, params)
        standing.stopping = reason
    move = may_move(standing.stopping is not None, standing.created, n, params)
    follow: list[FollowUp] = []
    if move:
        _move(s, rt, search, params, state, standing, seq)
        standing.created += 1
        follow.append(FollowUp(iteration + 1, particle, "dev"))
    s.add(
        ApplicationRow(
            search_id=search.id,
            seq=seq,
            iteration=iteration,
            particle=particle,
            utility=u,
            best_particle=standing.best.particle,
            best_iteration=standing.best.iteration,
            best_utility=standing.best.utility,
            best_hash=standing.best_hash,
            worst_particle=standing.worst.particle,
            worst_iteration=standing.worst.iteration,
            worst_utility=standing.worst.utility,
            worst_hash=standing.worst_hash,
            moved=move,
            stop_reason=reason,
        )
    )
    newest = _newest_iteration(s, search)
    _write_records(newest, standing)
    if not move and standing.created == seq + 1:  # nothing left in flight: the search ends
        from swarmq.engine._coordinate import add_final_evaluations

        search.status, search.finished_at = "completed", utcnow()
        search.stop_reason = standing.stopping
        first = list(
            s.scalars(
                select(ParticleStateRow)
                .where(ParticleStateRow.search_id == search.id, ParticleStateRow.iteration == 0)
                .order_by(ParticleStateRow.particle)
            )
        )
        s.flush()
        follow += [
            FollowUp(t, p, "test")
            for t, p in add_final_evaluations(s, search.id, search.n_experts, newest, first)
        ]
    return follow


def _newest_iteration(s: Session, search: SearchRow) -> IterationRow:
    row = s.get(IterationRow, (search.id, search.current_iteration))
    assert row is not None
    return row


def _write_records(row: IterationRow, standing: _Standing) -> None:
    assert standing.best is not None and standing.worst is not None
    row.best_particle, row.best_iteration = standing.best.particle, standing.best.iteration
    row.best_utility, row.best_hash = standing.best.utility, standing.best_hash
    row.worst_particle, row.worst_iteration = standing.worst.particle, standing.worst.iteration
    row.worst_utility, row.worst_hash = standing.worst.utility, standing.worst_hash
    row.applied_at = utcnow()


def _move(
    s: Session,
    rt: Runtime,
    search: SearchRow,
    params: SwarmParams,
    state: ParticleStateRow,
    standing: _Standing,
    seq: int,
) -> None:
    """Steps 2.2-2.3 for one particle: restart if stray, then move with lambda of its next
    iteration, reading the global best and worst as they stand after application ``seq``."""
    store = rt.store
    nxt = state.iteration + 1
    i = state.particle
    assert state.best_hash is not None and state.best_iteration is not None
    assert standing.best_hash is not None and standing.worst_hash is not None
    step = step_length_at(nxt, params)
    new_x, new_v, update = move_particle(
        store,
        state,
        search.seed,
        nxt,
        i,
        params,
        step,
        (store.get_vector(standing.best_hash), standing.best_hash),
        (store.get_vector(standing.worst_hash), standing.worst_hash),
        application=seq,
    )
    new_x_hash, new_v_hash = put_vectors_in_txn(
        s, store, (("position", new_x), ("velocity", new_v))
    )
    if s.get(IterationRow, (search.id, nxt)) is None:
        s.add(
            IterationRow(
                search_id=search.id,
                number=nxt,
                status="applied",  # no barrier: nothing ever waits for an iteration
                step_length=step,
                skipped_all=False,
            )
        )
        s.flush()
        search.current_iteration = max(search.current_iteration, nxt)
    s.add(
        ParticleStateRow(
            search_id=search.id,
            iteration=nxt,
            particle=i,
            position_hash=new_x_hash,
            velocity_hash=new_v_hash,
            restarted=update.restarted,
            update=update.to_json(),
        )
    )
    s.add(
        EvaluationRow(
            search_id=search.id,
            iteration=nxt,
            particle=i,
            split="dev",
            position_hash=new_x_hash,
            status="pending",
            attempts=0,
        )
    )


def unapplied(search_id: str) -> Select[int, int]:
    """(iteration, particle) of each recorded dev result of a search not applied yet."""
    return (
        select(EvaluationRow.iteration, EvaluationRow.particle)
        .outerjoin(
            ApplicationRow,
            (ApplicationRow.search_id == EvaluationRow.search_id)
            & (ApplicationRow.iteration == EvaluationRow.iteration)
            & (ApplicationRow.particle == EvaluationRow.particle),
        )
        .where(
            EvaluationRow.search_id == search_id,
            EvaluationRow.split == "dev",
            EvaluationRow.status == "done",
            ApplicationRow.seq.is_(None),
        )
    )


def apply_pending(rt: Runtime, search_id: str) -> list[FollowUp]:
    """Apply every recorded dev evaluation of an asynchronous search that is not applied yet
    (results recorded while the search was cancelled or failed), oldest first, and send what
    follows. A no-op when there are none; safe to repeat."""
    with rt.db.session() as s:
        search = search_in_txn(s, search_id, lock=True)
        if search.status != "running":
            return []
        done = s.execute(
            unapplied(search_id).order_by(
                EvaluationRow.finished_at, EvaluationRow.iteration, EvaluationRow.particle
            )
        ).all()
        follow = apply_recorded_in_txn(s, rt, search, [(int(t), int(p)) for t, p in done])
    send_follow_ups(rt, search_id, follow)
    return follow


def send_follow_ups(rt: Runtime, search_id: str, follow: list[FollowUp]) -> None:
    """Send the evaluations an application created (after its commit)."""
    for f in follow:
        rt.dispatcher.send_evaluation(search_id, f.iteration, f.particle, f.split)
