"""The coordinator: once an iteration's evaluations are in, apply the swarm update.

All of it happens in one transaction that holds the iteration's row lock: the personal and
global bests after iteration t, the stop decision, and, when the search goes on, the positions
and velocities of iteration t+1 (written to the artifact store first) with its pending
evaluations. A second coordinator run of the same iteration finds it applied and does nothing.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from swarmq.engine._asynchronous import apply_pending, is_asynchronous
from swarmq.engine._common import (
    config_of,
    move_particle,
    params_of,
    put_vectors_in_txn,
    record_artifacts_in_txn,
    search_in_txn,
)
from swarmq.engine._faults import fault_point
from swarmq.engine._runtime import Runtime
from swarmq.errors import NotFoundError, StorageError, SwarmqError
from swarmq.storage import EvaluationRow, IterationRow, ParticleStateRow, utcnow
from swarmq.swarm import (
    Best,
    SwarmParams,
    UpdateRecord,
    best_initial_expert,
    improves_personal_best,
    initial_velocity,
    select_best,
    select_worst,
    should_stop,
    skipped_evaluations,
    step_length_at,
)

__all__ = [
    "CoordinationResult",
    "add_final_evaluations",
    "coordinate_iteration",
    "fail_coordination",
]


@dataclass(frozen=True)
class CoordinationResult:
    """What a coordination did.

    ``applied`` (next iteration created), ``stopped``, or a no-op: ``already``,
    ``incomplete`` or ``inactive``.
    """

    status: str
    next_iteration: int | None = None
    reason: str | None = None


def _states(session: Session, search_id: str, iteration: int) -> list[ParticleStateRow]:
    return list(
        session.scalars(
            select(ParticleStateRow)
            .where(ParticleStateRow.search_id == search_id, ParticleStateRow.iteration == iteration)
            .order_by(ParticleStateRow.particle)
        )
    )


def coordinate_iteration(rt: Runtime, search_id: str, iteration: int) -> CoordinationResult:
    """Apply iteration ``iteration`` of a search once all its dev evaluations are finished."""
    pending_dev: list[int] = []
    skipped_all = False
    test_work: list[tuple[int, int]] = []
    fault_point("coordinate.started", search_id=search_id, iteration=iteration)
    if _asynchronous(rt, search_id):
        # No barrier to apply: a coordination (sent by resume or the reconciler) applies the
        # results recorded while the search was not running, if any.
        follow = apply_pending(rt, search_id)
        return CoordinationResult("applied" if follow else "already")
    with rt.db.session() as s:
        it = s.scalars(
            select(IterationRow)
            .where(IterationRow.search_id == search_id, IterationRow.number == iteration)
            .with_for_update()
        ).one_or_none()
        if it is None:
            raise NotFoundError(f"search {search_id!r} has no iteration {iteration}")
        if it.status != "evaluating":
            return CoordinationResult("already")
        search = search_in_txn(s, search_id, lock=True)
        if search.status != "running":
            return CoordinationResult("inactive", reason=search.status)
        unfinished = s.scalar(
            select(EvaluationRow.id)
            .where(
                EvaluationRow.search_id == search_id,
                EvaluationRow.iteration == iteration,
                EvaluationRow.split == "dev",
                EvaluationRow.status.not_in(("done", "skipped")),
            )
            .limit(1)
        )
        if unfinished is not None:
            return CoordinationResult("incomplete")

        config = config_of(search.config_json)
        params = params_of(config)
        seed = search.seed
        states = _states(s, search_id, iteration)
        prev = None if iteration == 0 else s.get(IterationRow, (search_id, iteration - 1))
        prev_states = [] if iteration == 0 else _states(s, search_id, iteration - 1)

        # Step 2.5: personal bests (strict improvement), then the all-time global records.
        utilities: list[float | None] = [st.utility if st.evaluated else None for st in states]
        for i, st in enumerate(states):
            if iteration == 0:
                st.best_hash, st.best_utility, st.best_iteration = st.position_hash, st.utility, 0
                continue
            before = prev_states[i]
            st.best_hash, st.best_utility, st.best_iteration = (
                before.best_hash,
                before.best_utility,
                before.best_iteration,
            )
            u = utilities[i]
            if improves_personal_best(before.best_utility, u):
                st.best_hash, st.best_utility, st.best_iteration = st.position_hash, u, iteration
        best = select_best(_record(prev, "best"), utilities, iteration)
        worst = select_worst(_record(prev, "worst"), utilities, iteration)
        assert best is not None and worst is not None  # iteration 0 evaluates everyone
        it.best_particle, it.best_iteration, it.best_utility = (
            best.particle,
            best.iteration,
            best.utility,
        )
        # A record set at an earlier iteration keeps that iteration's hash (prev exists then).
        it.best_hash = (
            states[best.particle].position_hash
            if best.iteration == iteration
            else _hash(prev, "best")
        )
        it.worst_particle, it.worst_iteration, it.worst_utility = (
            worst.particle,
            worst.iteration,
            worst.utility,
        )
        it.worst_hash = (
            states[worst.particle].position_hash
            if worst.iteration == iteration
            else _hash(prev, "worst")
        )
        it.status, it.applied_at = "applied", utcnow()

        store = rt.store
        g = store.get_vector(it.best_hash)
        if iteration == 0 and params.initial_velocity == "best":
            xs = [store.get_vector(st.position_hash) for st in states]
            vs = [initial_velocity("best", xs, i, seed, global_best=g) for i in range(len(xs))]
            for st, h in zip(
                states, put_vectors_in_txn(s, store, (("velocity", v) for v in vs)), strict=True
            ):
                st.velocity_hash = h
            del xs, vs

        # Step 2.1 for the next iteration: the stop rule over the global-best history.
        history: list[float] = [
            float(u)  # type: ignore[arg-type]  # applied iterations always have a best
            for u in s.scalars(
                select(IterationRow.best_utility)
                .where(IterationRow.search_id == search_id, IterationRow.number < iteration)
                .order_by(IterationRow.number)
            )
        ] + [best.utility]
        nxt = iteration + 1
        reason = should_stop(history, nxt, params)
        if reason is not None:
            search.status, search.stop_reason, search.finished_at = "completed", reason, utcnow()
            test_work = add_final_evaluations(s, search_id, search.n_experts, it, states)
        else:
            skipped = skipped_evaluations(seed, nxt, len(states), params)
            skipped_all = all(skipped)
            _create_next(s, rt, search_id, nxt, params, seed, states, it, g, skipped, skipped_all)
            search.current_iteration = nxt
            pending_dev = longest_expected_first(
                s, search_id, iteration, [i for i, skip in enumerate(skipped) if not skip]
            )

    # Committed, nothing sent yet: a crash here leaves pending rows without messages, which
    # the reconciler finds (tests kill the process at this point).
    fault_point("coordinate.committed", search_id=search_id, iteration=iteration)
    for iteration_, particle in test_work:
        rt.dispatcher.send_evaluation(search_id, iteration_, particle, "test")
    if reason is not None:
        return CoordinationResult("stopped", reason=reason)
    for i in pending_dev:
        rt.dispatcher.send_evaluation(search_id, nxt, i, "dev")
    if skipped_all:  # dropout-K skipped the whole iteration: nothing will call us back
        rt.dispatcher.send_coordination(search_id, nxt)
    return CoordinationResult("applied", next_iteration=nxt)


# How many of a particle's latest recorded evaluations predict its next one's duration.
DURATION_HISTORY = 3


def longest_expected_first(
    s: Session, search_id: str, iteration: int, particles: list[int]
) -> list[int]:
    """``particles`` in the order their next evaluations should be sent: longest expected first.

    An iteration ends with its slowest evaluation (the update needs them all), so the long ones
    must start first: sent last, a long evaluation would start when the others are nearly done
    and run alone while the other workers idle (the longest-processing-time-first rule, within
    4/3 of the best possible schedule). A particle's expected duration is the mean of its last
    ``DURATION_HISTORY`` recorded dev evaluations up to ``iteration``; one without any
    (skipped by dropout since) goes first, as it may be the longest. Ties keep particle order.
    The order changes when evaluations start, never what they compute.
    """
    rows = s.execute(
        select(EvaluationRow.particle, EvaluationRow.started_at, EvaluationRow.finished_at)
        .where(
            EvaluationRow.search_id == search_id,
            EvaluationRow.split == "dev",
            EvaluationRow.status == "done",
            EvaluationRow.iteration > iteration - DURATION_HISTORY,
            EvaluationRow.iteration <= iteration,
        )
        .order_by(EvaluationRow.iteration)
    ).all()
    durations: dict[int, list[float]] = {}
    for particle, started, finished in rows:
        if started is not None and finished is not None:
            durations.setdefault(particle, []).append((finished - started).total_seconds())

    def expected(particle: int) -> float:
        seen = durations.get(particle)
        return float("inf") if not seen else sum(seen) / len(seen)

    return sorted(particles, key=lambda p: (-expected(p), p))


def _asynchronous(rt: Runtime, search_id: str) -> bool:
    with rt.db.session() as s:
        return is_asynchronous(search_in_txn(s, search_id).config_json)


def fail_coordination(rt: Runtime, search_id: str, iteration: int, err: BaseException) -> bool:
    """Fail the search when its coordination raised an error that a retry would meet again.

    A :class:`SwarmqError` other than a database error (an artifact store that is full or
    read-only, a corrupted artifact) fails every retry the same way: the search stops now,
    with that error as its reason, rather than after ``max_attempts`` coordinations with a
    reason that names none. Database errors are transient (a restart): the coordination is
    sent again. An iteration already applied is left alone (the error came from sending its
    messages, which the reconciler sends again). Returns whether the search was failed.
    """
    if not isinstance(err, SwarmqError) or isinstance(err, StorageError | NotFoundError):
        return False
    try:
        with rt.db.session() as s:
            it = s.get(IterationRow, (search_id, iteration), with_for_update=True)
            if it is None or it.status != "evaluating":
                return False
            search = search_in_txn(s, search_id, lock=True)
            if search.status != "running":
                return False
            search.status, search.finished_at = "failed", utcnow()
            search.stop_reason = (
                f"coordination of iteration {iteration} failed: {err.__class__.__name__}: "
                f"{err}; fix the cause, then run: swarmq resume {search_id}"
            )
            return True
    except SwarmqError:  # the database is gone too: the reconciler sends the coordination again
        return False


def _hash(row: IterationRow | None, which: str) -> str:
    assert row is not None
    digest = row.best_hash if which == "best" else row.worst_hash
    assert digest is not None
    return digest


def _record(row: IterationRow | None, which: str) -> Best | None:
    if row is None:
        return None
    particle, iteration, utility = (
        (row.best_particle, row.best_iteration, row.best_utility)
        if which == "best"
        else (row.worst_particle, row.worst_iteration, row.worst_utility)
    )
    assert particle is not None and iteration is not None and utility is not None
    return Best(particle, iteration, utility)


def _create_next(
    s: Session,
    rt: Runtime,
    search_id: str,
    nxt: int,
    params: SwarmParams,
    seed: int,
    states: list[ParticleStateRow],
    it: IterationRow,
    g: np.ndarray,
    skipped: list[bool],
    skipped_all: bool,
) -> None:
    """Steps 2.2-2.3: restart stray particles, then move every particle with lambda_{t+1}."""
    store = rt.store
    step = step_length_at(nxt, params)
    assert it.worst_hash is not None and it.best_hash is not None
    g_worst = store.get_vector(it.worst_hash)
    s.add(
        IterationRow(
            search_id=search_id,
            number=nxt,
            status="evaluating",
            step_length=step,
            skipped_all=skipped_all,
        )
    )
    s.flush()
    # Durable writes of the new positions and velocities dominate this step; they run on a few
    # threads (file I/O and hashing release the GIL) while the next particle is computed.
    # At most `window` arrays wait in memory, so large adapters do not pile up.
    window = 8
    pending: deque[Future[str]] = deque()
    writes: list[Future[str]] = []
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="swarmq-write") as pool:
        updates: list[tuple[UpdateRecord, bool]] = []
        for i, st in enumerate(states):
            assert (
                st.best_hash is not None
                and st.best_iteration is not None
                and st.velocity_hash is not None
            )
            new_x, new_v, update = move_particle(
                store, st, seed, nxt, i, params, step, (g, it.best_hash), (g_worst, it.worst_hash)
            )
            for vec in (new_x, new_v):
                while len(pending) >= window:
                    pending.popleft().result()
                future = pool.submit(store.put_vector, vec)
                pending.append(future)
                writes.append(future)
            updates.append((update, skipped[i]))
        hashes = [f.result() for f in writes]  # re-raises a failed write (e.g. a full disk)
    nbytes = int(g.nbytes)
    record_artifacts_in_txn(
        s, ((h, "position" if k % 2 == 0 else "velocity", nbytes) for k, h in enumerate(hashes))
    )
    for i, (st, (record, skip)) in enumerate(zip(states, updates, strict=True)):
        new_x_hash, new_v_hash = hashes[2 * i], hashes[2 * i + 1]
        s.add(
            ParticleStateRow(
                search_id=search_id,
                iteration=nxt,
                particle=i,
                position_hash=new_x_hash,
                velocity_hash=new_v_hash,
                restarted=record.restarted,
                update=record.to_json(),
                # A particle skipped by dropout keeps its previous utility but still moves.
                utility=st.utility if skip else None,
                evaluated=False if skip else None,
            )
        )
        s.add(
            EvaluationRow(
                search_id=search_id,
                iteration=nxt,
                particle=i,
                split="dev",
                position_hash=new_x_hash,
                status="skipped" if skip else "pending",
                utility=st.utility if skip else None,
                attempts=0,
            )
        )


def add_final_evaluations(
    s: Session, search_id: str, n_experts: int, it: IterationRow, states: list[ParticleStateRow]
) -> list[tuple[int, int]]:
    """Queue the final report's test evaluations: the best initial expert and the global best."""
    first = _states(s, search_id, 0) if it.number != 0 else states
    best_expert = best_initial_expert([st.utility for st in first[:n_experts]])
    assert best_expert is not None  # iteration 0 evaluates every expert
    assert (
        it.best_iteration is not None and it.best_particle is not None and it.best_hash is not None
    )
    targets = [
        (0, best_expert, first[best_expert].position_hash),
        (it.best_iteration, it.best_particle, it.best_hash),
    ]
    work: list[tuple[int, int]] = []
    for iteration, particle, position_hash in targets:
        if (iteration, particle) in work:
            continue
        s.add(
            EvaluationRow(
                search_id=search_id,
                iteration=iteration,
                particle=particle,
                split="test",
                position_hash=position_hash,
                status="pending",
                attempts=0,
            )
        )
        work.append((iteration, particle))
    return work
