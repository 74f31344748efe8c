"""``swarmq audit``: recompute a whole search from its record and name the first mismatch.

Every particle state of iteration t >= 1 records the inputs of the update that produced it:
the random factors, the coefficients, the step length, the restart decision and the hashes of
the x, v, p, g and g_w it read. The audit checks, in this order, for every state:

1. the recorded inputs are the ones the algorithm prescribes: the factors are the draws of the
   search seed for (t, particle), the coefficients follow from them, the step length is
   lambda_t, the restart decision follows from the previous personal best's age, and the input
   hashes are the previous state's position/velocity (or p and a zero velocity after a
   restart), its personal best, and the previous iteration's global best and worst;
2. each input artifact hashes to its name (read once, then kept in memory);
3. the update recomputed with the pure algorithm (:func:`swarmq.swarm.apply_update`, the same
   float32 operations as the coordinator) gives exactly the recorded position and velocity
   hashes, and the stored files hold those bytes;
4. the evaluation and best bookkeeping: the utility is the dev evaluation's, dropout skips are
   the seeded ones, the personal best and the global best and worst follow the rules.

The baselines recorded by ``swarmq baselines`` are checked last
(:mod:`swarmq.reporting._audit_baselines`).

Iteration 0 is checked too: the crossover lineage is redrawn from the seed, each crossover
child is recomputed from its parents' recorded positions, and the starting velocities are
recomputed; optionally (``check_experts``) the experts' positions are compared with the pool
on disk. Finally the stop decision is recomputed from the global-best history.

Each distinct artifact is read and hashed once; a recomputed output is compared byte for byte
with its stored file and then serves as the next iteration's input, so the audit costs about
one verified read of every artifact plus the update arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from swarmq.engine import config_of, layout_of, params_of, search_in_txn
from swarmq.errors import ArtifactError, SwarmqError
from swarmq.reporting._audit_read import (
    AuditState,
    Evaluations,
    Records,
    VerifiedVectors,
    iter_states,
)
from swarmq.reporting._columns import lineage_query
from swarmq.storage import (
    Artifact,
    ArtifactStore,
    Database,
    EvaluationRow,
    IterationRow,
    ParticleStateRow,
    encode_vector,
    hash_bytes,
)
from swarmq.swarm import (
    Best,
    SwarmParams,
    UpdateRecord,
    apply_update,
    draw_factors,
    expand_population,
    improves_personal_best,
    initial_velocity,
    needs_restart,
    select_best,
    select_worst,
    should_stop,
    skipped_evaluations,
    step_length_at,
    update_coefficients,
)

__all__ = ["AuditResult", "Mismatch", "audit_search"]

DEFAULT_CACHE_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Mismatch:
    """One disagreement between the record and its recomputation.

    ``iteration``/``particle`` are ``None`` for search-wide checks. ``field`` names what
    disagrees (``position``, ``factors``, ``best_hash``, ``artifact x``...).
    """

    iteration: int | None
    particle: int | None
    field: str
    expected: str
    recorded: str

    def __str__(self) -> str:
        where = []
        if self.iteration is not None:
            where.append(f"iteration {self.iteration}")
        if self.particle is not None:
            where.append(f"particle {self.particle}")
        place = ", ".join(where) or "search"
        return f"{place}, {self.field}: expected {self.expected}, recorded {self.recorded}"


@dataclass(frozen=True)
class AuditResult:
    """What the audit checked, what it found, and how long it took."""

    search_id: str
    iterations: int
    states: int
    updates: int
    artifacts_read: int
    bytes_read: int
    seconds: float
    mismatches: tuple[Mismatch, ...]
    notes: tuple[str, ...] = ()
    #: Recorded baseline evaluations checked (``swarmq baselines``).
    baselines: int = 0
    #: Recorded evaluations run again (``reevaluate`` dev ones, plus the final table's test
    #: ones with ``final``) and compared with the record.
    reevaluated: int = 0

    @property
    def ok(self) -> bool:
        """Whether the record agrees with its recomputation everywhere checked."""
        return not self.mismatches


class _StopAudit(Exception):
    pass


@dataclass
class _Findings:
    limit: int
    items: list[Mismatch] = field(default_factory=list)

    def add(
        self, iteration: int | None, particle: int | None, what: str, expected: Any, recorded: Any
    ) -> None:
        self.items.append(Mismatch(iteration, particle, what, _show(expected), _show(recorded)))
        if len(self.items) >= self.limit:
            raise _StopAudit

    def check(
        self, iteration: int | None, particle: int | None, what: str, expected: Any, recorded: Any
    ) -> bool:
        if _same(expected, recorded):
            return True
        self.add(iteration, particle, what, expected, recorded)
        return False


def _same(a: Any, b: Any) -> bool:
    # Exact comparison: floats went through JSON (repr round-trips) or a double column, so a
    # faithful record reproduces them bit for bit. A recorded bool must be a bool (True is not
    # 1 here); the lists compared hold floats, ints and hashes, never bools.
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value)


def audit_search(
    db: Database,
    store: ArtifactStore,
    search_id: str,
    *,
    max_mismatches: int = 1,
    check_experts: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    progress: Callable[[int, int], None] | None = None,
    reevaluate: int = 0,
    final: bool = False,
    evaluate: Callable[..., Any] | None = None,
    tolerance: float = 0.0,
) -> AuditResult:
    """Recompute every position and velocity of a search from its record; see the module doc.

    Stops after ``max_mismatches`` mismatches (the first one by default). ``check_experts``
    also compares the experts' recorded positions with the pool on disk (which may have moved
    or changed since the search; that is then reported as a mismatch). Vectors are kept in
    memory up to ``cache_bytes`` (least recently used ones are dropped and read again when
    needed). ``progress(t, total)`` is called after each iteration.

    ``reevaluate`` K > 0 runs K sampled recorded dev evaluations again, and ``final`` every
    test evaluation of the final table, with ``evaluate`` (the model by default), and names
    each whose utility differs from the record by more than ``tolerance`` (0: exactly equal;
    see :mod:`swarmq.reporting._reevaluate`).
    """
    t0 = time.perf_counter()
    with db.session() as s:
        search = search_in_txn(s, search_id)
        config = config_of(search.config_json)
        layout = layout_of(search.layout_json)
        params = params_of(config)
        seed, n, n_experts = search.seed, search.n_particles, search.n_experts
        status, stop_reason = search.status, search.stop_reason
        particles = s.execute(lineage_query(search_id)).all()
        iterations = {
            it.number: it
            for it in s.scalars(
                select(IterationRow)
                .where(IterationRow.search_id == search_id)
                .order_by(IterationRow.number)
            )
        }
        evaluations: Evaluations = {
            (it, p, split): (status_, utility, digest)
            for it, p, split, status_, utility, digest in s.execute(
                select(
                    EvaluationRow.iteration,
                    EvaluationRow.particle,
                    EvaluationRow.split,
                    EvaluationRow.status,
                    EvaluationRow.utility,
                    EvaluationRow.position_hash,
                ).where(EvaluationRow.search_id == search_id)
            ).all()
        }
        unrecorded: dict[tuple[int, int], list[tuple[str, str]]] = {}
        for column, what in (
            (ParticleStateRow.position_hash, "position"),
            (ParticleStateRow.velocity_hash, "velocity"),
        ):
            for it, p, h in s.execute(
                select(ParticleStateRow.iteration, ParticleStateRow.particle, column)
                .outerjoin(Artifact, Artifact.hash == column)
                .where(
                    ParticleStateRow.search_id == search_id,
                    column.is_not(None),
                    Artifact.hash.is_(None),
                )
            ).all():
                unrecorded.setdefault((it, p), []).append((what, str(h)))

    found = _Findings(max(1, max_mismatches))
    vectors = VerifiedVectors(store, cache_bytes, 4 * layout.size)
    counts = {"states": 0, "updates": 0, "iterations": 0, "baselines": 0, "reevaluated": 0}
    baseline_notes: list[str] = []
    last = max(iterations, default=-1)
    # Where the test evaluations (final table, baselines) say they read: checked at the end.
    tested = {
        (t, i): digest for (t, i, split), (_s, _u, digest) in evaluations.items() if split == "test"
    }
    seen: dict[tuple[int, int], str] = {}
    try:
        _check_structure(found, iterations, particles, n, n_experts, seed)
        if config.swarm.mode == "asynchronous":
            from swarmq.reporting._audit_async import replay_asynchronous

            replay_asynchronous(
                found,
                vectors,
                db,
                search_id,
                iterations=iterations,
                particles=particles,
                evaluations=evaluations,
                unrecorded=unrecorded,
                params=params,
                seed=seed,
                n=n,
                n_experts=n_experts,
                status=status,
                stop_reason=stop_reason,
                counts=counts,
                seen=seen,
                tested=tested,
                check_experts=check_experts,
                config=config,
                layout=layout,
            )
        else:
            history: list[float] = []
            prev: list[AuditState] = []
            for states in iter_states(db, search_id, last, n):
                t = len(history) if not states else states[0].iteration
                it_row = iterations.get(t)
                if it_row is None or [st.particle for st in states] != list(range(n)):
                    found.add(
                        t, None, "particle states", f"particles 0..{n - 1}", f"{len(states)} states"
                    )
                    break
                # This iteration's stored outputs are read and hashed ahead, in order of use.
                vectors.expect(h for st in states for h in (st.position_hash, st.velocity_hash))
                if t == 0:
                    _check_initial(
                        found, vectors, states, particles, params, seed, n_experts, it_row
                    )
                    if check_experts:
                        _check_experts(found, states, config, layout, n_experts, particles)
                else:
                    # The iteration exists, so the stop rule must have let it run.
                    found.check(
                        t,
                        None,
                        "stop rule",
                        "continue",
                        _stop_word(should_stop(history, t, params)),
                    )
                    # lambda_t is a loop over t: once per iteration, not once per particle.
                    step = step_length_at(t, params)
                    found.check(t, None, "step_length", step, it_row.step_length)
                    prev_it = iterations[t - 1]
                    for st, before in zip(states, prev, strict=True):
                        _check_update(found, vectors, st, before, prev_it, params, seed, step)
                        counts["updates"] += 1
                for st in states:
                    for what, h in unrecorded.get((t, st.particle), []):
                        found.add(t, st.particle, f"artifacts table ({what} {h})", "a row", "none")
                    if (t, st.particle) in tested:
                        seen[(t, st.particle)] = st.position_hash
                if it_row.status == "applied":
                    _check_bests(
                        found,
                        states,
                        prev,
                        it_row,
                        iterations.get(t - 1),
                        evaluations,
                        seed,
                        params,
                    )
                    history.append(float(it_row.best_utility or 0.0))
                elif t != last:
                    found.add(
                        t, None, "iteration status", "applied (a later one exists)", it_row.status
                    )
                counts["states"] += len(states)
                counts["iterations"] += 1
                prev = states
                if progress is not None:
                    progress(counts["iterations"], len(iterations))
            for key in sorted(tested):
                found.check(
                    key[0], key[1], "test evaluation position_hash", seen.get(key), tested[key]
                )
            if status == "completed" and history:
                found.check(
                    len(history),
                    None,
                    "stop rule",
                    _stop_word(should_stop(history, len(history), params)),
                    _stop_word(stop_reason),
                )
        counts["baselines"], baseline_notes = _check_baselines(
            found, vectors, db, search_id, seed, n_experts, evaluations
        )
        if reevaluate > 0 or final:
            counts["reevaluated"] = _reevaluate(
                found, db, store, search_id, reevaluate, final, evaluate, tolerance
            )
    except _StopAudit:
        pass
    finally:
        vectors.close()
    notes = list(baseline_notes)
    if not check_experts:
        notes.append(
            "the experts' positions were not compared with the pool on disk (--check-experts does)"
        )
    return AuditResult(
        search_id=search_id,
        iterations=counts["iterations"],
        states=counts["states"],
        updates=counts["updates"],
        artifacts_read=vectors.reads,
        bytes_read=vectors.bytes,
        seconds=time.perf_counter() - t0,
        mismatches=tuple(found.items),
        notes=tuple(notes),
        baselines=counts["baselines"],
        reevaluated=counts["reevaluated"],
    )


def _reevaluate(
    found: _Findings,
    db: Database,
    store: ArtifactStore,
    search_id: str,
    sample: int,
    final: bool,
    evaluate: Callable[..., Any] | None,
    tolerance: float,
) -> int:
    """Recorded utilities against a new evaluation of their positions."""
    from swarmq.reporting._reevaluate import reevaluate_search

    if evaluate is None:
        from swarmq.engine import model_evaluate

        evaluate = model_evaluate
    done = reevaluate_search(db, store, search_id, sample=sample, final=final, evaluate=evaluate)
    what = "utility (evaluated again" + (")" if tolerance == 0 else f", tolerance {tolerance!r})")
    for r in done:
        if r.agrees(tolerance):
            continue
        found.add(
            r.iteration,
            r.particle,
            f"{r.split} {what}",
            r.recomputed if r.recomputed is not None else f"an evaluation ({r.error})",
            r.recorded,
        )
    return len(done)


def _check_baselines(
    found: _Findings,
    vectors: VerifiedVectors,
    db: Database,
    search_id: str,
    seed: int,
    n_experts: int,
    evaluations: Evaluations,
) -> tuple[int, list[str]]:
    """The baselines' record (see :mod:`swarmq.reporting._audit_baselines`)."""
    from swarmq.reporting._audit_baselines import check_baselines

    def check(what: str, expected: Any, recorded: Any) -> bool:
        return found.check(None, None, what, expected, recorded)

    def read(what: str, digest: str) -> np.ndarray | None:
        try:
            vector = vectors.get(digest)
        except ArtifactError as err:
            found.add(None, None, f"{what} {digest}", "content hashing to its name", err)
            return None
        _check_finite(found, vectors, None, None, what, digest, vector)
        return vector

    def compare(what: str, vector: np.ndarray, recorded: str | None) -> None:
        digest, problem = vectors.confirm(recorded, vector)
        if not found.check(None, None, what, digest, recorded):
            return
        if problem is not None:
            found.add(None, None, f"{what} {recorded}", "content hashing to its name", problem)
            return
        _check_finite(found, vectors, None, None, what, digest, vector)

    experts: list[np.ndarray | None] = []
    expert_dev: dict[int, float] = {}
    for p in range(n_experts):
        status, utility, digest = evaluations.get((0, p, "dev"), ("missing", None, ""))
        experts.append(read(f"expert {p} position", digest) if digest else None)
        if status == "done" and utility is not None:
            expert_dev[p] = float(utility)
    dev_done = sum(
        1
        for (_t, _p, split), (st, _u, _h) in evaluations.items()
        if split == "dev" and st == "done"
    )
    return check_baselines(
        db,
        search_id,
        seed=seed,
        experts=experts,
        expert_dev=expert_dev,
        dev_evaluations=dev_done,
        check=check,
        compare=compare,
        read=read,
    )


def _stop_word(reason: str | None) -> str:
    return "continue" if reason is None else f"stop ({reason})"


def _check_structure(
    found: _Findings,
    iterations: dict[int, IterationRow],
    particles: Sequence[Any],
    n: int,
    n_experts: int,
    seed: int,
) -> None:
    """Iterations numbered 0..T, and the crossover lineage redrawn from the seed."""
    numbers = sorted(iterations)
    found.check(None, None, "iteration numbers", list(range(len(numbers))), numbers)
    found.check(None, None, "particles", list(range(n)), [p[0] for p in particles])
    # expand_population's draws do not depend on the vectors' values: redraw them on 1-element
    # stand-ins to get the lineage the seed prescribes.
    stand_ins = [np.zeros(1, dtype=np.float32) for _ in range(n_experts)]
    try:
        _, lineage = expand_population(stand_ins, n, seed)
    except ValueError as err:
        found.add(None, None, "population", "a valid expansion", str(err))
        return
    for (index, name, first, second, weight), parent in zip(particles, lineage, strict=False):
        if parent is None:
            found.check(
                0,
                index,
                "lineage",
                "an expert (no parents)",
                "an expert (no parents)" if first is None else f"parents {first}, {second}",
            )
            found.check(0, index, "expert_name", "a name", "a name" if name else "none")
        else:
            found.check(
                0,
                index,
                "lineage (first, second, weight)",
                [parent.first, parent.second, parent.weight],
                [first, second, weight],
            )


def _check_finite(
    found: _Findings,
    vectors: VerifiedVectors,
    t: int | None,
    particle: int | None,
    what: str,
    digest: str,
    vector: np.ndarray,
) -> None:
    """A recorded vector holding NaN or infinity is a mismatch, even when recomputing it gives
    the same NaNs: no utility measured at such a position means anything."""
    if digest in vectors.finite_checked:
        return
    vectors.finite_checked.add(digest)
    finite = np.isfinite(vector)
    if finite.all():
        return
    first = int(np.argmin(finite))
    count = int(vector.size - np.count_nonzero(finite))
    found.add(
        t,
        particle,
        f"{what} {digest} values",
        "finite numbers",
        f"{count} of {vector.size} not finite "
        f"(the first {float(vector[first])!r} at index {first})",
    )


def _read(
    found: _Findings, vectors: VerifiedVectors, t: int, particle: int, what: str, digest: str | None
) -> np.ndarray | None:
    if digest is None:
        found.add(t, particle, f"artifact {what}", "a hash", "none")
        return None
    try:
        vector = vectors.get(digest)
    except ArtifactError as err:
        found.add(t, particle, f"artifact {what} {digest}", "content hashing to its name", err)
        return None
    _check_finite(found, vectors, t, particle, what, digest, vector)
    return vector


def _compare_output(
    found: _Findings,
    vectors: VerifiedVectors,
    t: int,
    particle: int,
    what: str,
    vector: np.ndarray,
    recorded: str | None,
) -> None:
    digest, problem = vectors.confirm(recorded, vector)
    if not found.check(t, particle, what, digest, recorded):
        return
    if problem is not None:
        found.add(
            t, particle, f"artifact {what} {recorded}", "content hashing to its name", problem
        )
        return
    _check_finite(found, vectors, t, particle, what, digest, vector)


def _check_initial(
    found: _Findings,
    vectors: VerifiedVectors,
    states: list[AuditState],
    particles: Sequence[Any],
    params: SwarmParams,
    seed: int,
    n_experts: int,
    it_row: IterationRow,
) -> None:
    """Iteration 0: crossover children from their parents, then the starting velocities."""
    xs: list[np.ndarray | None] = []
    for st in states:
        found.check(
            0, st.particle, "update", {"initial_velocity": params.initial_velocity}, st.update
        )
        if st.particle < n_experts:
            xs.append(_read(found, vectors, 0, st.particle, "position", st.position_hash))
            continue
        _, _, first, second, weight = particles[st.particle]
        a = xs[first] if first is not None and first < len(xs) else None
        b = xs[second] if second is not None and second < len(xs) else None
        if a is None or b is None or weight is None:
            found.add(0, st.particle, "position", "parents to recompute from", "none")
            xs.append(None)
            continue
        # The same float32 expression as swarmq.swarm.expand_population.
        child = (np.float32(weight) * a + np.float32(1.0 - weight) * b).astype(
            np.float32, copy=False
        )
        _compare_output(found, vectors, 0, st.particle, "position", child, st.position_hash)
        xs.append(child)
    if any(x is None for x in xs):
        return
    positions: list[np.ndarray] = [x for x in xs if x is not None]
    mode = params.initial_velocity
    for st in states:
        i = st.particle
        if mode == "best":
            if it_row.status != "applied":
                found.check(0, i, "velocity", None, st.velocity_hash)
                continue
            g = _read(found, vectors, 0, i, "g", it_row.best_hash)
            if g is None:
                continue
            v = initial_velocity("best", positions, i, seed, global_best=g)
        else:
            v = initial_velocity(mode, positions, i, seed)
        _compare_output(found, vectors, 0, i, "velocity", v, st.velocity_hash)


def _check_experts(
    found: _Findings,
    states: list[AuditState],
    config: Any,
    layout: Any,
    n_experts: int,
    particles: Sequence[Any],
) -> None:
    from swarmq.weights import load_pool

    try:
        pool = load_pool(config.experts.path, config.experts.adapter_config)
    except SwarmqError as err:
        found.add(0, None, "expert pool", f"readable at {config.experts.path}", err)
        return
    found.check(0, None, "expert pool layout", layout.to_json(), pool.layout.to_json())
    found.check(0, None, "number of experts", n_experts, len(pool.experts))
    for k, (expert, vector) in enumerate(zip(pool.experts, pool.vectors, strict=False)):
        if k >= n_experts:
            break
        found.check(0, k, "expert_name", expert.name, particles[k][1])
        found.check(
            0,
            k,
            f"position (expert {expert.name} on disk)",
            hash_bytes(encode_vector(vector)),
            states[k].position_hash,
        )


def _check_update(
    found: _Findings,
    vectors: VerifiedVectors,
    st: AuditState,
    before: AuditState,
    prev_it: IterationRow | Records,
    params: SwarmParams,
    seed: int,
    step: float,
) -> None:
    """One update of iteration t >= 1: recorded inputs, input artifacts, recomputed outputs."""
    t, i = st.iteration, st.particle
    u = st.update
    keys = UpdateRecord.FIELDS
    if not isinstance(u, dict) or any(k not in u for k in keys):
        found.add(t, i, "update", f"a record with {', '.join(keys)}", u)
        return
    factors = draw_factors(seed, t, i, params.random_weights)
    drawn = [factors.r_v, factors.r_p, factors.r_g, factors.r_w]
    found.check(t, i, "factors [r_v, r_p, r_g, r_w]", drawn, u["factors"])
    found.check(
        t,
        i,
        "coefficients [a, b, c, d]",
        list(update_coefficients(factors, params)),
        u["coefficients"],
    )
    found.check(t, i, "update step_length", step, u["step_length"])
    if before.best_iteration is None:
        found.add(t, i, "previous best_iteration", "a number", "none")
        return
    restart = needs_restart(t, before.best_iteration, params)
    found.check(t, i, "restarted (update)", restart, u["restarted"])
    found.check(t, i, "restarted (column)", restart, st.restarted)
    if u["restarted"]:
        expected_x, expected_v = before.best_hash, None
    else:
        expected_x, expected_v = before.position_hash, before.velocity_hash
    found.check(t, i, "input x", expected_x, u["x"])
    found.check(t, i, "input v", expected_v, u["v"])
    found.check(t, i, "input p", before.best_hash, u["p"])
    found.check(t, i, "input g", prev_it.best_hash, u["g"])
    found.check(t, i, "input g_worst", prev_it.worst_hash, u["g_worst"])

    # Recompute from what the record says was read: a wrong input was named just above, and
    # what follows checks that the stored outputs really are the update of those inputs.
    x = _read(found, vectors, t, i, "x", u["x"])
    p = _read(found, vectors, t, i, "p", u["p"])
    g = _read(found, vectors, t, i, "g", u["g"])
    gw = _read(found, vectors, t, i, "g_worst", u["g_worst"])
    v = None if u["v"] is None else _read(found, vectors, t, i, "v", u["v"])
    if x is None or p is None or g is None or gw is None or (u["v"] is not None and v is None):
        return
    if v is None:
        v = np.zeros_like(p)  # a restart reads a zero velocity, as the coordinator does
    if not isinstance(u["coefficients"], list) or len(u["coefficients"]) != 4:
        return  # already named above: the recorded coefficients differ from the expected ones
    a, b, c, d = (float(k) for k in u["coefficients"])
    new_x, new_v = apply_update(x, v, p, g, gw, (a, b, c, d), float(u["step_length"]))
    _compare_output(found, vectors, t, i, "position", new_x, st.position_hash)
    _compare_output(found, vectors, t, i, "velocity", new_v, st.velocity_hash)


def _check_bests(
    found: _Findings,
    states: list[AuditState],
    prev: list[AuditState],
    it_row: IterationRow,
    prev_it: IterationRow | None,
    evaluations: Evaluations,
    seed: int,
    params: SwarmParams,
) -> None:
    """Utilities against the evaluations, dropout, personal bests, global best and worst."""
    t = it_row.number
    skipped = skipped_evaluations(seed, t, len(states), params)
    found.check(t, None, "skipped_all", all(skipped), it_row.skipped_all)
    utilities: list[float | None] = []
    for k, st in enumerate(states):
        i = st.particle
        ev = evaluations.get((t, i, "dev"))
        if ev is None:
            found.add(t, i, "dev evaluation", "a row", "none")
            utilities.append(None)
            continue
        status, value, evaluated_hash = ev
        found.check(t, i, "dev evaluation position_hash", st.position_hash, evaluated_hash)
        found.check(t, i, "evaluated (dropout)", not skipped[k], st.evaluated)
        if skipped[k]:
            found.check(t, i, "dev evaluation status", "skipped", status)
            found.check(
                t, i, "utility (carried over)", prev[k].utility if prev else None, st.utility
            )
            utilities.append(None)
        else:
            found.check(t, i, "dev evaluation status", "done", status)
            found.check(t, i, "utility", value, st.utility)
            utilities.append(st.utility)
        # Personal best: the coordinator's rule (strict improvement).
        if t == 0:
            expected: tuple[str | None, float | None, int | None] = (
                st.position_hash,
                st.utility,
                0,
            )
        else:
            before = prev[k]
            expected = (before.best_hash, before.best_utility, before.best_iteration)
            u = utilities[-1]
            if improves_personal_best(before.best_utility, u):
                expected = (st.position_hash, u, t)
        found.check(
            t,
            i,
            "personal best (hash, utility, iteration)",
            list(expected),
            [st.best_hash, st.best_utility, st.best_iteration],
        )

    def record(row: IterationRow | None, which: str) -> Best | None:
        if row is None:
            return None
        if which == "best":
            vals = (row.best_particle, row.best_iteration, row.best_utility)
        else:
            vals = (row.worst_particle, row.worst_iteration, row.worst_utility)
        if any(v is None for v in vals):
            return None
        return Best(int(vals[0]), int(vals[1]), float(vals[2]))  # type: ignore[arg-type]

    for which, select_fn in (("best", select_best), ("worst", select_worst)):
        expected_rec = select_fn(record(prev_it, which), utilities, t)
        if expected_rec is None:
            found.add(t, None, f"global {which}", "a record", "none")
            continue
        if expected_rec.iteration == t:
            digest: str | None = states[expected_rec.particle].position_hash
        else:
            assert prev_it is not None
            digest = prev_it.best_hash if which == "best" else prev_it.worst_hash
        recorded = (
            [it_row.best_particle, it_row.best_iteration, it_row.best_utility, it_row.best_hash]
            if which == "best"
            else [
                it_row.worst_particle,
                it_row.worst_iteration,
                it_row.worst_utility,
                it_row.worst_hash,
            ]
        )
        found.check(
            t,
            None,
            f"global {which} (particle, iteration, utility, hash)",
            [expected_rec.particle, expected_rec.iteration, expected_rec.utility, digest],
            recorded,
        )
