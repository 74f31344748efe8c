"""The audit of an asynchronous search: replay its applications in the recorded order.

An asynchronous search (``[swarm] mode = "asynchronous"``) records, for every applied dev
evaluation, its sequence number in the ``applications`` table. The replay walks them in that
order and recomputes everything the engine decided at each one: the personal best, the global
best and worst after it, the stop decision (only when a block of N applications completes),
whether the particle moved on (no stop decided and the budget not spent), and, when it did,
the update that produced the particle's next state, from the global best and worst as they
stood at that application. The update itself is checked by the synchronous audit's
:func:`swarmq.reporting._audit._check_update`, bit for bit. Iteration 0 (crossover, starting
velocities) is checked as for a synchronous search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from swarmq.reporting._audit import _check_experts, _check_initial, _check_update, _Findings
from swarmq.reporting._audit_read import AuditState, Evaluations, Records, VerifiedVectors
from swarmq.reporting._columns import STATE_COLUMNS
from swarmq.storage import ApplicationRow, Database, IterationRow, ParticleStateRow
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

__all__ = ["replay_asynchronous"]


def replay_asynchronous(
    found: _Findings,
    vectors: VerifiedVectors,
    db: Database,
    search_id: str,
    *,
    iterations: dict[int, IterationRow],
    particles: Sequence[Any],
    evaluations: Evaluations,
    unrecorded: dict[tuple[int, int], list[tuple[str, str]]],
    params: SwarmParams,
    seed: int,
    n: int,
    n_experts: int,
    status: str,
    stop_reason: str | None,
    counts: dict[str, int],
    seen: dict[tuple[int, int], str],
    tested: dict[tuple[int, int], str],
    check_experts: bool,
    config: Any,
    layout: Any,
) -> None:
    """Check an asynchronous search's record; mismatches go to ``found`` (see the module)."""
    with db.session() as s:
        states = {
            (st.iteration, st.particle): st
            for st in (
                AuditState(**row._asdict())
                for row in s.execute(
                    select(*STATE_COLUMNS).where(ParticleStateRow.search_id == search_id)
                ).all()
            )
        }
        applications = list(
            s.scalars(
                select(ApplicationRow)
                .where(ApplicationRow.search_id == search_id)
                .order_by(ApplicationRow.seq)
            )
        )
        s.expunge_all()
    found.check(
        None,
        None,
        "application numbers",
        list(range(len(applications))),
        [a.seq for a in applications],
    )
    for (t, i), known in states.items():
        for what, h in unrecorded.get((t, i), []):
            found.add(t, i, f"artifacts table ({what} {h})", "a row", "none")
        if (t, i) in tested:
            seen[(t, i)] = known.position_hash
    first = [states.get((0, i)) for i in range(n)]
    if any(st is None for st in first):
        found.add(0, None, "particle states", f"particles 0..{n - 1}", "some missing")
        return
    initial = [st for st in first if st is not None]
    vectors.expect(h for st in initial for h in (st.position_hash, st.velocity_hash))
    _check_initial(found, vectors, initial, particles, params, seed, n_experts, iterations[0])
    if check_experts:
        _check_experts(found, initial, config, layout, n_experts, particles)
    counts["states"] += n
    for t, row in iterations.items():
        if t > 0:
            found.check(t, None, "step_length", step_length_at(t, params), row.step_length)
        found.check(t, None, "iteration status", "applied", row.status)
    counts["iterations"] = len(iterations)

    best: Best | None = None
    worst: Best | None = None
    best_hash: str | None = None
    worst_hash: str | None = None
    stopping: str | None = None
    created = n
    block_bests: list[float] = []
    for a in applications:
        t, i, seq = a.iteration, a.particle, a.seq
        st = states.get((t, i))
        if st is None:
            found.add(t, i, f"state of application {seq}", "a row", "none")
            return
        status_, value, evaluated_hash = evaluations.get((t, i, "dev"), ("missing", None, ""))
        found.check(t, i, f"dev evaluation status (application {seq})", "done", status_)
        found.check(t, i, "dev evaluation position_hash", st.position_hash, evaluated_hash)
        found.check(t, i, "utility", value, st.utility)
        found.check(t, i, f"utility (application {seq})", value, a.utility)
        found.check(t, i, "evaluated", True, st.evaluated)
        u = float(a.utility)
        if t == 0:
            expected: list[Any] = [st.position_hash, u, 0]
        else:
            prev = states.get((t - 1, i))
            if prev is None:
                found.add(t, i, "previous state", "a row", "none")
                return
            expected = [prev.best_hash, prev.best_utility, prev.best_iteration]
            if improves_personal_best(prev.best_utility, u):
                expected = [st.position_hash, u, t]
        found.check(
            t,
            i,
            "personal best (hash, utility, iteration)",
            expected,
            [st.best_hash, st.best_utility, st.best_iteration],
        )
        if improves_best(best, u):
            best, best_hash = Best(i, t, u), st.position_hash
        if improves_worst(worst, u):
            worst, worst_hash = Best(i, t, u), st.position_hash
        assert best is not None and worst is not None
        found.check(
            t,
            i,
            f"global best after application {seq} (particle, iteration, utility, hash)",
            [best.particle, best.iteration, best.utility, best_hash],
            [a.best_particle, a.best_iteration, a.best_utility, a.best_hash],
        )
        found.check(
            t,
            i,
            f"global worst after application {seq} (particle, iteration, utility, hash)",
            [worst.particle, worst.iteration, worst.utility, worst_hash],
            [a.worst_particle, a.worst_iteration, a.worst_utility, a.worst_hash],
        )
        if (seq + 1) % n == 0:
            block_bests.append(best.utility)
        reason = None
        if stopping is None:
            reason = asynchronous_stop(block_bests, seq + 1, n, params)
            stopping = reason
        found.check(t, i, f"stop decision (application {seq})", reason, a.stop_reason)
        move = may_move(stopping is not None, created, n, params)
        found.check(t, i, f"moved (application {seq})", move, a.moved)
        nxt = states.get((t + 1, i))
        if not move:
            found.check(t + 1, i, "particle state", "none (it did not move)", _exists(nxt))
            continue
        created += 1
        if nxt is None:
            found.add(t + 1, i, "particle state", "a row (it moved)", "none")
            continue
        found.check(
            t + 1,
            i,
            "update application",
            seq,
            nxt.update.get("application") if isinstance(nxt.update, dict) else None,
        )
        vectors.expect((nxt.position_hash, nxt.velocity_hash))
        _check_update(
            found,
            vectors,
            nxt,
            st,
            Records(best_hash, worst_hash),
            params,
            seed,
            step_length_at(t + 1, params),
        )
        counts["updates"] += 1
        counts["states"] += 1
    found.check(None, None, "particle states (created by applications)", created, len(states))
    done = sum(
        1
        for (_t, _p, split), (st_, _u, _h) in evaluations.items()
        if split == "dev" and st_ == "done"
    )
    found.check(None, None, "recorded dev results that were applied", done, len(applications))
    if applications and best is not None and worst is not None:
        newest = iterations[max(iterations)]
        found.check(
            newest.number,
            None,
            "newest iteration's global best (particle, iteration, utility, hash)",
            [best.particle, best.iteration, best.utility, best_hash],
            [newest.best_particle, newest.best_iteration, newest.best_utility, newest.best_hash],
        )
    finished = created == len(applications)
    if finished:
        found.check(None, None, "search status", "completed", status)
        found.check(None, None, "stop reason", stopping, stop_reason)
    else:
        found.check(
            None,
            None,
            "search status",
            "not completed (evaluations in flight)",
            "completed" if status == "completed" else "not completed (evaluations in flight)",
        )
    for key in sorted(tested):
        found.check(key[0], key[1], "test evaluation position_hash", seen.get(key), tested[key])


def _exists(state: AuditState | None) -> str:
    return "none (it did not move)" if state is None else "a row"
