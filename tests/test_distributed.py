"""The distributed mode on the real servers: Redis as the broker, PostgreSQL as the record.

One set of real worker processes (``swarmq worker``: a coordinator and two evaluation workers)
serves the module. They evaluate with tests/distributed_hooks.py: the real tiny model, or a
closed-form utility, a slow one, or one that kills its own process, chosen by the search.
Timings are shrunk (heartbeat every 0.3 s, dead after 2 s, reconciler every second) so that
failures are detected in seconds; every process is killed in teardown.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import distributed_hooks
import pytest
from click.testing import CliRunner
from clusters import (
    Cluster,
    PrivateRedis,
    children,
    closed_form,
    cluster_client,
    embedded_reference,
    evaluations,
    make_pool,
    running_cluster,
    same_result,
    swarmq_env,
    wait_finished,
    worker_env,
)
from conftest import REDIS_URL, _server_missing, fresh_database
from sqlalchemy import select

from swarmq.cli import main
from swarmq.engine import (
    Runtime,
    best_history,
    coordinate_iteration,
    create_search,
    final_report,
    run_evaluation,
    search_summary,
    utility_histories,
)
from swarmq.execution import DistributedClient, EmbeddedRunner, LocalQueue
from swarmq.settings import Settings
from swarmq.storage import Database, EvaluationRow, IterationRow, LocalArtifactStore

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


# --- servers and workers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """Redis database 15, emptied before and after the module."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as err:
        _server_missing(f"Redis at {REDIS_URL}", err)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture(scope="module")
def dist_db(postgres_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the module's cluster, at the latest schema."""
    with fresh_database(postgres_server, "swarmq_dist", upgrade=True) as url:
        yield url


@pytest.fixture(scope="module")
def cluster_env(
    redis_url: str, dist_db: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cluster")
    return worker_env(
        root, database=dist_db, broker=redis_url, evaluate="distributed_hooks:evaluate"
    )


@pytest.fixture(scope="module")
def cluster(cluster_env: dict[str, str]) -> Iterator[Cluster]:
    """A coordinator and two evaluation workers (two processes on two Celery nodes)."""
    with running_cluster(cluster_env) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster_env: dict[str, str], cluster: Cluster) -> DistributedClient:
    return cluster_client(cluster_env)


# --- tests --------------------------------------------------------------------------------------


def test_two_workers_give_the_embedded_result(
    client: DistributedClient, cluster: Cluster, tmp_path: Path
) -> None:
    cfg = closed_form(make_pool(tmp_path / "pool", 4), "same-as-embedded")
    sid = client.submit(cfg, check_objective=False)
    db = client.runtime.db
    assert wait_finished(db, sid, cluster) == "completed"
    ref_db, ref = embedded_reference(tmp_path, cfg)
    same_result(db, sid, ref_db, ref)
    evs = evaluations(db, sid)
    assert all(e.status in ("done", "skipped") and e.attempts <= 1 for e in evs)
    # Both evaluation processes took part (and only evaluation workers evaluated).
    workers = {e.worker for e in evs if e.worker}
    assert len(workers) >= 2, workers


def test_an_asynchronous_search_on_two_workers_audits(
    client: DistributedClient, cluster: Cluster, tmp_path: Path
) -> None:
    from swarmq.reporting import audit_search
    from swarmq.storage import ApplicationRow

    cfg = closed_form(
        make_pool(tmp_path / "pool", 4),
        "asynchronous",
        "slow",
        sleep=0.05,
        swarm={"mode": "asynchronous"},
        max_iterations=4,
    )
    sid = client.submit(cfg, check_objective=False)
    db = client.runtime.db
    assert wait_finished(db, sid, cluster) == "completed"
    evs = evaluations(db, sid)
    dev = [e for e in evs if e.split == "dev"]
    assert all(e.status == "done" and e.attempts == 1 for e in evs)
    assert len({e.worker for e in dev}) >= 2
    with db.session() as s:
        seqs = list(
            s.scalars(
                select(ApplicationRow.seq)
                .where(ApplicationRow.search_id == sid)
                .order_by(ApplicationRow.seq)
            )
        )
    # Every result applied exactly once, numbered without gaps by the database.
    assert seqs == list(range(len(dev)))
    result = audit_search(db, LocalArtifactStore(Path(cluster.env["SWARMQ_ARTIFACTS"])), sid)
    assert result.ok, [str(m) for m in result.mismatches]


def test_cli_submit_cancel_resume_on_the_real_model(
    cluster_env: dict[str, str],
    cluster: Cluster,
    client: DistributedClient,
    write_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    config = write_config(search={"max_iterations": 3})
    runner = CliRunner(env=swarmq_env(cluster_env))

    def cli(*args: str) -> Any:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    sid = cli("submit", str(config)).stdout.strip()
    db = client.runtime.db
    deadline = time.monotonic() + 60
    while search_summary(db, sid).evaluations_done < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    cli("cancel", sid)
    assert search_summary(db, sid).status == "cancelled"
    # Running evaluations finish; nothing new starts and no iteration is applied.
    time.sleep(2.5)
    frozen = [(e.iteration, e.particle, e.status) for e in evaluations(db, sid)]
    assert not any(status == "running" for *_k, status in frozen)
    time.sleep(1.5)
    assert [(e.iteration, e.particle, e.status) for e in evaluations(db, sid)] == frozen

    listing = json.loads(cli("list", "--json").stdout)
    assert any(row["id"] == sid and row["status"] == "cancelled" for row in listing)
    cli("resume", sid)
    assert wait_finished(db, sid, cluster) == "completed"
    watched = cli("watch", sid, "--interval", "0.2").stdout
    # Not a terminal: a line per change, the last one the finished state.
    last = watched.strip().splitlines()[-1]
    assert f"{sid}: completed" in last and "best " in last, watched
    dist = json.loads(cli("status", sid, "--json").stdout)

    # The same search in one process, without servers: the same numbers.
    ref = CliRunner().invoke(
        main,
        [
            "--db",
            f"sqlite:///{tmp_path / 'ref.sqlite'}",
            "--artifacts",
            str(tmp_path / "ref-art"),
            "run",
            str(config),
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert ref.exit_code == 0, ref.output
    ref_db = Database(f"sqlite:///{tmp_path / 'ref.sqlite'}")
    (ref_row,) = json.loads(
        CliRunner()
        .invoke(main, ["--db", f"sqlite:///{tmp_path / 'ref.sqlite'}", "status", "--json"])
        .stdout
    )
    ref_sid = ref_row["id"]
    assert dist["utility_histories"] == utility_histories(ref_db, ref_sid)
    assert dist["best_history"] == best_history(ref_db, ref_sid)
    ref_final = final_report(ref_db, ref_sid)
    assert ref_final is not None
    assert dist["final"]["global_best"] == vars(ref_final.global_best)
    assert dist["final"]["best_expert"] == vars(ref_final.best_expert)


def test_a_task_that_kills_its_worker_stops_at_the_attempt_cap(
    client: DistributedClient, cluster: Cluster, tmp_path: Path
) -> None:
    cfg = closed_form(make_pool(tmp_path / "pool", 2), "killer", hook="kill", particles=2)
    sid = client.submit(cfg, check_objective=False)
    db = client.runtime.db
    assert wait_finished(db, sid, cluster, timeout=60) == "failed"
    s = search_summary(db, sid)
    assert s.stop_reason is not None
    assert "given up after 3 attempts (max_attempts = 3)" in s.stop_reason
    assert "killed" in s.stop_reason
    # Redeliveries still in flight end as no-ops; an evaluation whose process died after the
    # search failed is released (by its redelivery, or by the reconciler once its heartbeat
    # is stale) rather than shown as running forever.
    deadline = time.monotonic() + 20
    while any(e.status == "running" for e in evaluations(db, sid)):
        assert time.monotonic() < deadline, cluster.tails()
        time.sleep(0.2)
    evs = evaluations(db, sid)
    assert max(e.attempts for e in evs) == 3 and all(e.attempts <= 3 for e in evs)
    # The workers replaced their killed processes and still serve.
    assert all(p.poll() is None for p in cluster.procs.values()), cluster.tails()


def test_lost_messages_are_sent_again_without_duplicating_live_work(
    client: DistributedClient, cluster: Cluster, tmp_path: Path
) -> None:
    import redis

    pool = make_pool(tmp_path / "pool", 4)
    # A client killed between its commit and its send: rows, no messages.
    silent = create_search(
        client.runtime, closed_form(pool, "never-sent", max_iterations=2), check_objective=False
    )
    # A broker that loses its queue while evaluations run: two are taken, six are lost.
    cfg = closed_form(pool, "queue-lost", hook="slow", sleep=0.4, particles=8, max_iterations=2)
    sid = client.submit(cfg, check_objective=False)
    broker = redis.Redis.from_url(str(client.settings.broker_url))
    deadline = time.monotonic() + 10
    while broker.llen("swarmq.evaluate") > 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broker.delete("swarmq.evaluate") == 1
    db = client.runtime.db
    assert wait_finished(db, silent, cluster) == "completed"
    assert wait_finished(db, sid, cluster) == "completed"
    evs = evaluations(db, sid)
    resent = [e for e in evs if e.iteration == 0 and e.split == "dev" and e.dispatched_at]
    assert len(resent) >= 4  # the lost ones, sent by the reconciler
    # Every evaluation ran exactly once: live ones were not sent again.
    assert all(e.attempts == 1 for e in evs if e.status == "done"), [
        (e.iteration, e.particle, e.attempts) for e in evs
    ]


def test_a_dead_machine_is_found_by_its_heartbeat_and_a_restarted_coordinator_resumes(
    client: DistributedClient, cluster: Cluster, tmp_path: Path
) -> None:
    db = client.runtime.db
    pool = make_pool(tmp_path / "pool", 2)
    cfg = closed_form(pool, "dead-machine", hook="slow", sleep=1.5, particles=2, max_iterations=1)
    sid = client.submit(cfg, check_objective=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = [e for e in evaluations(db, sid) if e.status == "running"]
        if len(running) == 2:
            break
        time.sleep(0.05)
    assert len(running) == 2, cluster.tails()
    # eval-a's machine dies: no process is left to put its message back, and Redis would hand
    # it out again only after the visibility timeout (over an hour). The heartbeat tells.
    victim = cluster.procs["eval-a"]
    pids = {victim.pid, *children(victim.pid)}
    (lost,) = [e for e in running if int(str(e.worker).rsplit(":", 1)[1]) in pids]
    cluster.kill("eval-a")
    # The coordinator goes down too, and comes back while the work goes on.
    cluster.kill("coordinator")
    time.sleep(1.0)
    cluster.start("coordinator", "--coordinator")
    assert wait_finished(db, sid, cluster, timeout=60) == "completed"
    again = next(e for e in evaluations(db, sid) if e.id == lost.id)
    assert again.status == "done" and again.attempts == 2
    assert again.worker != lost.worker
    cluster.start("eval-a")


# --- the database settles races, not the workers --------------------------------------------------


def _runtime(url: str, artifacts: Path) -> tuple[Runtime, LocalQueue]:
    """A runtime of its own (its own connections), as another process would have."""
    queue = LocalQueue()
    rt = Runtime(Database(url), LocalArtifactStore(artifacts), queue)
    rt.evaluate = distributed_hooks.distance_utility
    return rt, queue


def test_concurrent_coordinators_apply_an_iteration_exactly_once(
    postgres_url: str, tmp_path: Path
) -> None:
    pool = make_pool(tmp_path / "pool", 4)
    runner = EmbeddedRunner(
        Settings(postgres_url, tmp_path / "art"), evaluate=distributed_hooks.distance_utility
    )
    sid = create_search(runner.runtime, closed_form(pool, "race"), check_objective=False)
    n = 7
    # Seven evaluations finish at the same moment in seven threads: one of them is the last.
    runtimes = [_runtime(postgres_url, tmp_path / "art") for _ in range(8)]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def evaluate(i: int) -> None:
        try:
            barrier.wait()
            run_evaluation(runtimes[i][0], sid, 0, i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=evaluate, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    sent = [m for _rt, q in runtimes for m in q.messages if m[0] == "swarmq.coordinate"]
    assert sent == [("swarmq.coordinate", {"search_id": sid, "iteration": 0})]

    # Eight coordinators of the same iteration at once: one applies it, the others do nothing.
    results: list[str] = []
    barrier8 = threading.Barrier(8)

    def coordinate(i: int) -> None:
        try:
            barrier8.wait()
            results.append(coordinate_iteration(runtimes[i][0], sid, 0).status)
        except BaseException as err:
            errors.append(err)

    for q in (q for _rt, q in runtimes):
        q.messages.clear()
    threads = [threading.Thread(target=coordinate, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == ["already"] * 7 + ["applied"]
    with runner.runtime.db.session() as s:
        its = s.scalars(select(IterationRow).where(IterationRow.search_id == sid)).all()
        evs = s.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid, EvaluationRow.iteration == 1
            )
        ).all()
    assert sorted(it.number for it in its) == [0, 1]
    assert len(evs) == n
    sent_evals = [m for _rt, q in runtimes for m in q.messages if m[0] == "swarmq.evaluate"]
    assert len(sent_evals) == n  # the next iteration was dispatched once
    for rt, _q in runtimes:
        rt.db.engine.dispose()


def test_a_worker_on_another_database_refuses_the_work_back_to_the_queue(
    postgres_server: str, tmp_path: Path
) -> None:
    # A worker started with another database URL on the same broker used to acknowledge and
    # drop every message it took (it found none of their rows). Now each message carries its
    # database's identity; the wrong worker puts the message back, logs one error and stops
    # taking messages, `swarmq status` says the work waits for a matching worker, and the
    # right workers, once started, give the embedded result.
    redis = PrivateRedis().start()
    try:
        with (
            fresh_database(postgres_server, "swarmq_right", upgrade=True) as right,
            fresh_database(postgres_server, "swarmq_wrong", upgrade=True) as wrong,
        ):
            hook = "distributed_hooks:evaluate"
            (tmp_path / "right").mkdir()
            (tmp_path / "wrong").mkdir()
            right_env = worker_env(
                tmp_path / "right", database=right, broker=redis.url, evaluate=hook
            )
            wrong_env = worker_env(
                tmp_path / "wrong", database=wrong, broker=redis.url, evaluate=hook
            )
            assert Database(right).identity() != Database(wrong).identity()
            misplaced = Cluster(wrong_env, tmp_path / "wrong")
            try:
                misplaced.start("wrong", "--concurrency", "1")
                client = cluster_client(right_env)
                cfg = closed_form(make_pool(tmp_path / "pool", 4), "same-as-embedded")
                sid = client.submit(cfg, check_objective=False)
                n = len(evaluations(client.runtime.db, sid))
                log = tmp_path / "wrong" / "wrong.log"
                deadline = time.monotonic() + 30
                while "stops taking messages" not in log.read_text(errors="replace"):
                    assert time.monotonic() < deadline, misplaced.tail("wrong")
                    time.sleep(0.2)
                time.sleep(1.0)
                text = log.read_text(errors="replace")
                assert text.count("stops taking messages") == 1, text
                assert Database(right).identity() in text and "NotFoundError" not in text
                # Nothing was claimed, and every message is still in the broker.
                evs = evaluations(client.runtime.db, sid)
                assert all(e.status == "pending" and e.attempts == 0 for e in evs)
                queued = client.broker().queued_evaluations()
                assert queued is not None and len(queued) == n
                shown = CliRunner(env=swarmq_env(right_env)).invoke(main, ["status", sid])
                assert shown.exit_code == 0, shown.output
                flat = " ".join(shown.output.split())
                assert f"{n} evaluation(s) waiting with no matching worker" in flat, flat
                assert "are on other databases" in flat
                with running_cluster(right_env) as cluster:
                    assert wait_finished(client.runtime.db, sid, cluster) == "completed"
                ref_db, ref = embedded_reference(tmp_path, cfg)
                same_result(client.runtime.db, sid, ref_db, ref)
                assert misplaced.procs["wrong"].poll() is None  # alive, taking nothing
            finally:
                misplaced.stop_all()
    finally:
        redis.stop()
