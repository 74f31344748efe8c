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

With ``[objective] particles_per_batch`` above 1, one task claims several pending evaluations of
the same iteration and split, scores them in one mixed-adapter batch and records each; the
other particles' messages then find their rows finished and do nothing.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

from swarmq.config import SearchConfig
from swarmq.engine._asynchronous import (
    FollowUp,
    apply_recorded_in_txn,
    is_asynchronous,
    send_follow_ups,
)
from swarmq.engine._common import (
    adapter_config_of,
    config_of,
    layout_of,
    require_finite,
    require_storable,
    search_in_txn,
)
from swarmq.engine._faults import fault_point
from swarmq.engine._leases import (
    FINISHED,
    STOPPED_BEATING,
    EvaluationPolicy,
    Heartbeat,
    holder_gone,
    worker_name,
)
from swarmq.engine._runtime import Runtime
from swarmq.errors import NotFoundError, SwarmqError
from swarmq.objectives import UtilityResult
from swarmq.storage import (
    EvaluationRow,
    IterationRow,
    ParticleStateRow,
    SearchRow,
    database_clock,
    database_now,
    encode_item_scores,
    utcnow,
)
from swarmq.weights import Layout

__all__ = ["EvaluateFn", "Outcome", "one_line", "run_evaluation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What an evaluation task did.

    ``done``; or a no-op: ``duplicate`` (already finished), ``cancelled``, ``inactive`` (the
    search failed), ``busy`` (a live worker holds it); or ``failed`` (given up after
    ``max_attempts``). ``batch`` names the other particles this task claimed and evaluated
    along with its own (``[objective] particles_per_batch``).
    """

    status: str
    utility: float | None = None
    batch: tuple[int, ...] = ()


# (config, adapter_config, layout, vector, split) -> (utility, metrics), or a UtilityResult
# (which also carries the per-item scores recorded with the evaluation).
EvaluateFn = Callable[
    [SearchConfig, dict[str, Any] | None, Layout, np.ndarray, str],
    tuple[float, dict[str, Any]] | UtilityResult,
]

# What is recorded of one finished evaluation: utility, metrics, encoded item scores.
_Done = tuple[float, dict[str, Any], bytes | None]


def one_line(err: BaseException) -> str:
    """``Type: first line of the message``, at most 500 characters: what a person reads first."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."


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

    With ``[objective] particles_per_batch`` K above 1, the task also claims up to K - 1 other
    evaluations of the same search, iteration and split that are ``pending`` (held by no one:
    rows another claim has locked are skipped, not waited for), scores them in one call of the
    hook's ``many`` and records each. Their own messages then find them finished, or held by
    this live worker, and do nothing. Each claimed row keeps its own attempts and errors.

    Errors of this particle's evaluation propagate after they are recorded (see
    :func:`_record_failure`); a companion's error is recorded on its row and logged.
    """
    worker = worker or worker_name()
    policy = policy or EvaluationPolicy()
    fast = _claim_pending(rt, search_id, iteration, particle, split, worker, policy)
    if fast is not None:
        claims, config_json, layout_json, adapter_json = fast
        try:
            extra = config_of(config_json).objective.particles_per_batch - 1
        except SwarmqError:
            extra = 0  # a bad record fails below, where its error is recorded
        if extra > 0:
            # Companions are rows of their own, claimed in a transaction of their own.
            with rt.db.session() as s:
                now = database_now(s)
                claims += [
                    _claim_in_txn(row, worker, now)
                    for row in _companions_in_txn(
                        s, search_id, iteration, particle, split, extra, policy
                    )
                ]
    else:
        claims, config_json, layout_json, adapter_json, early = _claim_in_general(
            rt, search_id, iteration, particle, split, worker, policy
        )
        if early is not None:
            return early

    try:
        with Heartbeat(rt, [c.evaluation_id for c in claims], worker, policy.heartbeat_interval):
            outcomes = _evaluate_claims(
                rt,
                evaluate or rt.evaluate,
                claims,
                config_of(config_json),
                layout_of(layout_json),
                adapter_config_of(adapter_json),
                iteration,
                split,
            )
    except BaseException as err:  # not an Exception: the process is being stopped
        for c in claims:
            if _record_failure(
                rt, search_id, iteration, c.particle, split, err, policy, c.attempts
            ):
                rt.dispatcher.send_evaluation(search_id, iteration, c.particle, split)
        raise

    done = {p: o for p, o in outcomes.items() if not isinstance(o, BaseException)}
    recorded: dict[int, Outcome] = {}
    if done:
        recorded, coordinate, follow = _record_done(rt, search_id, iteration, split, done)
        fault_point(
            "evaluate.recorded",
            search_id=search_id,
            iteration=iteration,
            particle=particle,
            split=split,
        )
        if coordinate:
            rt.dispatcher.send_coordination(search_id, iteration)
        send_follow_ups(rt, search_id, follow)
    own_error: BaseException | None = None
    for c in claims:
        error = outcomes[c.particle]
        if not isinstance(error, BaseException):
            continue
        if _record_failure(rt, search_id, iteration, c.particle, split, error, policy, c.attempts):
            rt.dispatcher.send_evaluation(search_id, iteration, c.particle, split)
        if c.particle == particle:
            own_error = error
            continue
        log.warning(
            "evaluation of particle %s (with particle %s's batch) at iteration %s (%s) failed: %s",
            c.particle,
            particle,
            iteration,
            split,
            error,
        )
    if own_error is not None:
        raise own_error
    batch = tuple(c.particle for c in claims[1:])
    own = recorded[particle]
    return Outcome(own.status, own.utility, batch)


def _claim_pending(
    rt: Runtime,
    search_id: str,
    iteration: int,
    particle: int,
    split: str,
    worker: str,
    policy: EvaluationPolicy,
) -> tuple[list[_Claim], str, str, str | None] | None:
    """The usual delivery, in one statement: claim the evaluation if it is ``pending``, under
    the attempt cap, and its search neither cancelled nor failed; returns the claim and the
    search's recorded configuration, layout and adapter configuration, or None for every
    other case (finished, running, at the cap, a stopped search, SQLite), which
    :func:`_claim_in_general` decides row in hand.

    The same ``UPDATE`` that checks the row's state changes it, atomically, stamped with the
    database's clock: on PostgreSQL one statement in autocommit, one round trip, instead of a
    transaction (BEGIN, a locking read, a write, COMMIT).
    """
    if rt.db.is_sqlite:
        return None  # SQLite's RETURNING cannot name the joined searches table
    clock = func.clock_timestamp()
    with rt.db.statement() as conn:
        found = conn.execute(
            update(EvaluationRow)
            .where(
                EvaluationRow.search_id == search_id,
                EvaluationRow.iteration == iteration,
                EvaluationRow.particle == particle,
                EvaluationRow.split == split,
                EvaluationRow.status == "pending",
                EvaluationRow.attempts < policy.max_attempts,
                SearchRow.id == EvaluationRow.search_id,
                SearchRow.status.not_in(("cancelled", "failed")),
            )
            .values(
                status="running",
                attempts=EvaluationRow.attempts + 1,
                worker=worker,
                started_at=clock,
                heartbeat_at=clock,
                finished_at=None,
                error=None,
            )
            .returning(
                EvaluationRow.id,
                EvaluationRow.attempts,
                EvaluationRow.position_hash,
                SearchRow.config_json,
                SearchRow.layout_json,
                SearchRow.adapter_config_json,
            )
        ).one_or_none()
    if found is None:
        return None
    evaluation_id, attempts, position_hash, config_json, layout_json, adapter_json = found
    claim = _Claim(evaluation_id, particle, attempts, position_hash)
    return [claim], config_json, layout_json, adapter_json


def _claim_in_general(
    rt: Runtime,
    search_id: str,
    iteration: int,
    particle: int,
    split: str,
    worker: str,
    policy: EvaluationPolicy,
) -> tuple[list[_Claim], str, str, str | None, Outcome | None]:
    """Every delivery that :func:`_claim_pending` did not claim: decide with the row in
    hand (a duplicate, a stopped search, a live or dead holder, the cap). Returns the claims
    and the search's records, or the outcome of a delivery that claims nothing."""
    with rt.db.session() as s:
        # One statement: the row (locked), what the task needs of its search, and the time by
        # the database's clock, with which the lease is stamped as the reconciler judges it.
        found = s.execute(
            select(
                EvaluationRow,
                SearchRow.status,
                SearchRow.config_json,
                SearchRow.layout_json,
                SearchRow.adapter_config_json,
                database_clock(s),
            )
            .join(SearchRow, SearchRow.id == EvaluationRow.search_id)
            .where(
                EvaluationRow.search_id == search_id,
                EvaluationRow.iteration == iteration,
                EvaluationRow.particle == particle,
                EvaluationRow.split == split,
            )
            .with_for_update(of=EvaluationRow)
        ).one_or_none()
        if found is None:
            raise NotFoundError(
                f"search {search_id!r} has no {split} evaluation of particle {particle} "
                f"at iteration {iteration}"
            )
        ev, search_status, config_json, layout_json, adapter_json, clock = found
        if ev.status in FINISHED:
            return [], "", "", None, Outcome("duplicate", ev.utility)
        now = clock if clock is not None else utcnow()
        if search_status in ("cancelled", "failed"):
            if ev.status == "running" and holder_gone(ev, now, policy):
                ev.status, ev.worker = "pending", None  # nobody works on it any more
            return (
                [],
                "",
                "",
                None,
                Outcome("cancelled" if search_status == "cancelled" else "inactive"),
            )
        if ev.status == "running" and not holder_gone(ev, now, policy):
            # A second message for work a live worker holds (a reconciler race, a redelivery):
            # running it again would only burn a GPU. If the holder dies, its heartbeat stops
            # and the reconciler sends the evaluation again.
            return [], "", "", None, Outcome("busy")
        if ev.attempts >= policy.max_attempts:
            _give_up_in_txn(s, ev, search_id, iteration, particle, split, policy, now)
            return [], "", "", None, Outcome("failed")
        claims = [_claim_in_txn(ev, worker, now)]
        try:
            extra = config_of(config_json).objective.particles_per_batch - 1
        except SwarmqError:
            extra = 0  # a bad record fails below, where its error is recorded
        if extra > 0:
            claims += [
                _claim_in_txn(row, worker, now)
                for row in _companions_in_txn(
                    s, search_id, iteration, particle, split, extra, policy
                )
            ]
    return claims, config_json, layout_json, adapter_json, None


@dataclass(frozen=True)
class _Claim:
    """An evaluation row this task set to ``running``: what it needs to evaluate and record it."""

    evaluation_id: int
    particle: int
    attempts: int
    position_hash: str


def _claim_in_txn(ev: EvaluationRow, worker: str, now: datetime) -> _Claim:
    """Mark ``ev`` running for ``worker``: every claim counts as an attempt."""
    ev.status, ev.attempts, ev.worker = "running", ev.attempts + 1, worker
    ev.started_at = ev.heartbeat_at = now
    ev.finished_at, ev.error = None, None
    return _Claim(ev.id, ev.particle, ev.attempts, ev.position_hash)


def _companions_in_txn(
    s: Any,
    search_id: str,
    iteration: int,
    particle: int,
    split: str,
    limit: int,
    policy: EvaluationPolicy,
) -> list[EvaluationRow]:
    """Up to ``limit`` evaluations to score along with ``particle``'s: same search, iteration and
    split, ``pending`` (a running, finished or failed row is someone else's business) and under
    the attempt cap (reaching it is for the row's own message to report), lowest particle first.
    """
    return list(
        s.scalars(
            select(EvaluationRow)
            .where(
                EvaluationRow.search_id == search_id,
                EvaluationRow.iteration == iteration,
                EvaluationRow.split == split,
                EvaluationRow.particle != particle,
                EvaluationRow.status == "pending",
                EvaluationRow.attempts < policy.max_attempts,
            )
            .order_by(EvaluationRow.particle)
            .limit(limit)
            # A row another worker's claim has locked is being claimed: skip it rather than
            # wait. (SQLite ignores this; its transactions run one at a time anyway.)
            .with_for_update(skip_locked=True)
        )
    )


def _evaluate_claims(
    rt: Runtime,
    evaluate: EvaluateFn,
    claims: list[_Claim],
    config: SearchConfig,
    layout: Layout,
    adapter_config: dict[str, Any] | None,
    iteration: int,
    split: str,
) -> dict[int, _Done | Exception]:
    """Each claimed particle's (utility, metrics, item scores), or the error that stopped it.

    A position that cannot be read fails alone; several positions go to the hook's ``many``
    when it has one (an error there fails them all), else to the hook one at a time.
    """
    outcomes: dict[int, _Done | Exception] = {}
    vectors: dict[int, np.ndarray] = {}
    for c in claims:
        try:
            vectors[c.particle] = rt.store.get_vector(c.position_hash)
        except Exception as err:
            outcomes[c.particle] = err
    ready = [c for c in claims if c.particle in vectors]
    many = getattr(evaluate, "many", None)
    results: list[tuple[float, dict[str, Any]] | UtilityResult | Exception] = []
    if len(ready) > 1 and callable(many):
        try:
            values = list(
                many(config, adapter_config, layout, [vectors[c.particle] for c in ready], split)
            )
            if len(values) != len(ready):
                raise SwarmqError(
                    f"the evaluation hook's many() returned {len(values)} results "
                    f"for {len(ready)} positions"
                )
            results.extend(values)
        except Exception as err:
            results = [err] * len(ready)
    else:
        for c in ready:
            try:
                results.append(evaluate(config, adapter_config, layout, vectors[c.particle], split))
            except Exception as err:
                results.append(err)
    for c, result in zip(ready, results, strict=True):
        if isinstance(result, Exception):
            outcomes[c.particle] = result
            continue
        items: bytes | None = None
        if isinstance(result, UtilityResult):
            value, metrics = result.value, dict(result.metrics)
            if result.item_scores is not None:
                items = encode_item_scores(result.item_scores)
        else:
            value, metrics = result
        what = (
            f"utility {config.objective.utility!r} on particle {c.particle}, iteration {iteration}"
        )
        try:
            utility = require_finite(value, what)
            require_storable(metrics, what)
        except SwarmqError as err:
            outcomes[c.particle] = err
            continue
        outcomes[c.particle] = (utility, metrics, items)
    return outcomes


def _record_done(
    rt: Runtime,
    search_id: str,
    iteration: int,
    split: str,
    done: dict[int, _Done],
) -> tuple[dict[int, Outcome], bool, list[FollowUp]]:
    """Record finished evaluations in one transaction; returns their outcomes, whether the
    iteration is now complete (the caller then sends the coordination: exactly one recorder
    sees that, since all of them take the iteration's row lock first), and, in the
    asynchronous mode, the evaluations their application created (to send after the commit)."""
    outcomes: dict[int, Outcome] = {}
    follow: list[FollowUp] = []
    with rt.db.session() as s:
        search = search_in_txn(s, search_id)
        asynchronous = split == "dev" and is_asynchronous(search.config_json)
        # The asynchronous mode applies the results here, under the search's row lock (taken
        # after the evaluation rows', the order every other writer of both uses); the
        # synchronous mode takes the iteration's lock to see which recorder completes it,
        # reading the database's clock in the same statement.
        it_status: str | None = None
        if asynchronous:
            now = database_now(s)
        else:
            locked = s.execute(
                select(IterationRow.status, database_clock(s))
                .where(IterationRow.search_id == search_id, IterationRow.number == iteration)
                .with_for_update()
            ).one_or_none()
            if locked is None:
                raise NotFoundError(f"search {search_id!r} has no iteration {iteration}")
            it_status, clock = locked
            # The database's clock, as for the claim: a duration (finished - started) must
            # not mix the clocks of two machines (the coordinator orders evaluations by them).
            now = clock if clock is not None else utcnow()
        # Then one conditional UPDATE per evaluation (a row already finished by another
        # delivery of the same work is left as it is) and one per particle state: no row is
        # read first.
        no_sync = {"synchronize_session": False}
        unfinished = (
            select(func.count())
            .select_from(EvaluationRow)
            .where(
                EvaluationRow.search_id == search_id,
                EvaluationRow.iteration == iteration,
                EvaluationRow.split == "dev",
                EvaluationRow.status.not_in(FINISHED),
            )
            .scalar_subquery()
        )
        remaining: int | None = None
        for particle in sorted(done):
            utility, metrics, items = done[particle]
            where = (
                EvaluationRow.search_id == search_id,
                EvaluationRow.iteration == iteration,
                EvaluationRow.split == split,
                EvaluationRow.particle == particle,
            )
            changed = s.execute(
                update(EvaluationRow)
                .where(*where, EvaluationRow.status.not_in(FINISHED))
                .values(
                    status="done",
                    utility=utility,
                    metrics=metrics,
                    item_scores=items,
                    finished_at=now,
                    error=None,
                )
                .returning(EvaluationRow.id),
                execution_options=no_sync,
            ).first()
            if changed is None:
                before = s.execute(select(EvaluationRow.utility).where(*where)).first()
                if before is None:
                    raise NotFoundError(
                        f"search {search_id!r} has no {split} evaluation of particle "
                        f"{particle} at iteration {iteration}"
                    )
                # Another delivery of the same work finished first.
                outcomes[particle] = Outcome("duplicate", before[0])
                continue
            outcomes[particle] = Outcome("done", utility)
            if split == "dev":
                # The state's UPDATE also returns how many of the iteration's evaluations are
                # still unfinished (this statement sees this transaction's own writes, and every
                # recorder that held the lock before): no round trip of its own.
                moved = s.execute(
                    update(ParticleStateRow)
                    .where(
                        ParticleStateRow.search_id == search_id,
                        ParticleStateRow.iteration == iteration,
                        ParticleStateRow.particle == particle,
                    )
                    .values(utility=utility, evaluated=True)
                    .returning(unfinished),
                    execution_options=no_sync,
                ).first()
                if moved is None:
                    raise NotFoundError(
                        f"particle {particle} has no state at iteration {iteration}"
                    )
                remaining = int(moved[0])
        coordinate = False
        if asynchronous:
            applying = [p for p, o in sorted(outcomes.items()) if o.status == "done"]
            search = search_in_txn(s, search_id, lock=True)
            follow = apply_recorded_in_txn(s, rt, search, [(iteration, p) for p in applying])
        elif split == "dev":
            if remaining is None:  # every one was a duplicate: count now
                remaining = int(s.scalar(select(unfinished)) or 0)
            coordinate = remaining == 0 and it_status == "evaluating"
    return outcomes, coordinate, follow


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
        # A recorded error starts with its one-line summary (see _record_failure).
        cause = f"the last error was: {last[0][:500]}"
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
    # The first line is what a person needs (the exception's one-line summary); the traceback
    # of an unexpected error follows it, for whoever debugs the utility.
    detail = (
        message
        if isinstance(err, SwarmqError)
        else one_line(err) + "\n\n" + "".join(traceback.format_exception(err))[-4000:]
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
