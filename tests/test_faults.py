"""Fault injection on real processes and servers, and bad input through the command line.

Every crash and every loss must end in the result of an uninterrupted run with the same seed,
or in a stop whose reason is recorded; no evaluation may be lost or counted twice. One cluster
(``swarmq worker``: a coordinator and two evaluation workers) serves the module, on a Redis and
a PostgreSQL of its own, which tests restart, and on an artifact store that is a small tmpfs
when the tests run as root (one test fills it). The workers evaluate with tests/fault_hooks.py
and SIGKILL themselves at the engine's fault points where a test arms one.

Each search is compared with the embedded run of its configuration (:func:`check_outcome`):
the same evaluations, each finished exactly once, with exactly the attempts the fault explains,
and the same utility histories, global best and final report.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from clusters import (
    Cluster,
    PrivatePostgres,
    PrivateRedis,
    children,
    closed_form,
    cluster_client,
    embedded_reference,
    evaluations,
    free_port,
    make_pool,
    running_cluster,
    same_result,
    swarmq_env,
    wait_finished,
    worker_env,
)
from conftest import IN_CI
from fault_hooks import FAULTS_ENV, arm, fired
from safetensors.numpy import save_file
from sqlalchemy import inspect, select, text

from swarmq.cli import main
from swarmq.config import SearchConfig
from swarmq.engine import create_search, pending_work, search_summary, send_work
from swarmq.execution import DistributedClient, EmbeddedRunner
from swarmq.execution._dispatch import CeleryDispatcher
from swarmq.settings import Settings
from swarmq.storage import Database, EvaluationRow, IterationRow, ParticleStateRow

FINISHED = ("done", "skipped")
Key = tuple[int, int, str]


# --- the module's servers, store and workers ------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().start()
    try:
        yield server
    finally:
        server.destroy()


@dataclass(frozen=True)
class Store:
    """The cluster's artifact folder; ``mounted``: a 64 MiB tmpfs of its own (root only)."""

    root: Path
    mounted: bool


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    argv = ["mount", "-t", "tmpfs", "-o", options, "swarmq-test", str(path)]
    return subprocess.run(argv, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("store")
    mounted = _mount_tmpfs(root, "size=64m,mode=0755")
    try:
        yield Store(root, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.fixture(scope="module")
def cluster_env(
    redis_server: PrivateRedis,
    pg_server: PrivatePostgres,
    store: Store,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("faults")
    return worker_env(
        root,
        database=pg_server.create_database("swarmq"),
        broker=redis_server.url,
        evaluate="fault_hooks:evaluate",
        artifacts=store.root,
        extra={"SWARMQ_FAULT_HOOK": "fault_hooks:fault", FAULTS_ENV: str(root / "faults")},
    )


@pytest.fixture(scope="module")
def cluster(cluster_env: dict[str, str]) -> Iterator[Cluster]:
    with running_cluster(cluster_env) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster_env: dict[str, str], cluster: Cluster) -> DistributedClient:
    return cluster_client(cluster_env)


@pytest.fixture
def faults(cluster_env: dict[str, str], cluster: Cluster) -> Iterator[Path]:
    """The folder where a test arms fault points; afterwards every point is disarmed and
    every worker is running again, so that one test's damage never reaches the next."""
    folder = Path(cluster_env[FAULTS_ENV])
    folder.mkdir(exist_ok=True)
    yield folder
    for plan in folder.glob("*.json"):
        plan.unlink()
    for name, proc in list(cluster.procs.items()):
        if proc.poll() is not None:
            cluster.procs.pop(name)
            cluster.restart(name)


# --- helpers ------------------------------------------------------------------------------------


def start(client: DistributedClient, cfg: SearchConfig, before_send: Callable[[str], None]) -> str:
    """Record a search, let the test arm its faults, then send its first evaluations."""
    sid = create_search(client.runtime, cfg, check_objective=False)
    before_send(sid)
    send_work(client.runtime, pending_work(client.runtime, sid))
    return sid


def reference(tmp_path: Path, name: str, **kwargs: Any) -> tuple[SearchConfig, Database, str]:
    """A closed-form search over a fresh pool of four experts, and its embedded reference run
    (database, search id): what the distributed run must reproduce."""
    cfg = closed_form(make_pool(tmp_path / "pool", 4), name, **kwargs)
    ref_db, ref = embedded_reference(tmp_path, cfg)
    return cfg, ref_db, ref


def submit(client: DistributedClient, cfg: SearchConfig) -> str:
    return client.submit(cfg, check_objective=False)


def wait_for(what: str, check: Callable[[], Any], cluster: Cluster, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}\n{cluster.tails()}")


def check_outcome(
    db: Database,
    sid: str,
    ref_db: Database,
    ref: str,
    attempts: dict[Key, int] | None = None,
) -> list[EvaluationRow]:
    """The search's evaluations are the reference's, each finished exactly once, with one
    attempt unless ``attempts`` says otherwise; its result is the reference's."""
    evs = evaluations(db, sid)
    keys = [(e.iteration, e.particle, e.split) for e in evs]
    assert len(set(keys)) == len(keys)
    assert keys == [(e.iteration, e.particle, e.split) for e in evaluations(ref_db, ref)]
    assert all(e.status in FINISHED for e in evs), [(e.iteration, e.status) for e in evs]
    expected = attempts or {}
    got = {k: e.attempts for k, e in zip(keys, evs, strict=True) if e.status == "done"}
    assert got == {k: expected.get(k, 1) for k in got}
    same_result(db, sid, ref_db, ref)
    return evs


def iterations(db: Database, sid: str) -> list[IterationRow]:
    with db.session() as s:
        return list(
            s.scalars(
                select(IterationRow)
                .where(IterationRow.search_id == sid)
                .order_by(IterationRow.number)
            )
        )


def our_processes(cluster: Cluster) -> set[int]:
    return {pid for proc in cluster.procs.values() for pid in (proc.pid, *children(proc.pid))}


def received(cluster: Cluster, task: str) -> int:
    """How many messages of ``task`` the cluster's workers took from the broker so far."""
    pattern = re.compile(rf"Task {re.escape(task)}\[[^\]]+\] received")
    return sum(
        len(pattern.findall((cluster.logs / f"{name}.log").read_text(errors="replace")))
        for name in cluster.procs
    )


# --- killed processes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_killed_mid_evaluation(
    client: DistributedClient, cluster: Cluster, faults: Path, tmp_path: Path
) -> None:
    cfg, ref_db, ref = reference(
        tmp_path, "kill-mid-evaluation", hook="slow", sleep=0.4, max_iterations=3
    )
    db = client.runtime.db
    sid = submit(client, cfg)

    def just_started() -> EvaluationRow | None:
        # Started less than 0.15 s ago: still in its 0.4 s sleep when the signal lands.
        now = time.time()
        for e in evaluations(db, sid):
            if (
                e.status == "running"
                and e.iteration >= 1
                and e.started_at is not None
                and now - e.started_at.timestamp() < 0.15
            ):
                return e
        return None

    victim = wait_for("an evaluation of iteration 1 to start", just_started, cluster)
    pid = int(str(victim.worker).rsplit(":", 1)[1])
    assert pid in our_processes(cluster)
    os.kill(pid, signal.SIGKILL)  # the pool process that runs it: an OOM kill

    assert wait_finished(db, sid, cluster) == "completed"
    key = (victim.iteration, victim.particle, victim.split)
    evs = check_outcome(db, sid, ref_db, ref, attempts={key: 2})
    again = next(e for e in evs if (e.iteration, e.particle, e.split) == key)
    assert again.worker != victim.worker


@pytest.mark.slow
def test_coordinator_killed_between_commit_and_dispatch(
    client: DistributedClient, cluster: Cluster, faults: Path, tmp_path: Path
) -> None:
    cfg, ref_db, ref = reference(tmp_path, "kill-after-commit", max_iterations=4)
    last = search_summary(ref_db, ref).iteration
    killed_at = [0, 2, last]  # the first, one in the middle, and the one that stops the search
    db = client.runtime.db
    sid = start(
        client,
        cfg,
        lambda sid: arm(faults, "coordinate.committed", search_id=sid, iteration=killed_at),
    )
    assert wait_finished(db, sid, cluster) == "completed"
    assert len(fired(faults, "coordinate.committed")) == len(killed_at)
    evs = check_outcome(db, sid, ref_db, ref)
    # What the killed coordinators committed but never sent, the reconciler sent: the next
    # iteration's evaluations, and after the last one the final test evaluations.
    unsent = [
        e for e in evs if (e.split == "dev" and e.iteration - 1 in killed_at) or e.split == "test"
    ]
    assert unsent and all(e.dispatched_at is not None for e in unsent)
    # Each redelivered coordination found its iteration applied: no second attempt counted.
    assert all(it.coordination_attempts == 1 for it in iterations(db, sid) if it.applied_at)


@pytest.mark.slow
def test_evaluation_killed_after_recording_before_coordination(
    client: DistributedClient, cluster: Cluster, faults: Path, tmp_path: Path
) -> None:
    # Every evaluation of iteration 1 kills its process right after its result commits: the
    # last one of them never sends the coordination, and its message comes back (a duplicate).
    cfg, ref_db, ref = reference(tmp_path, "kill-after-record", max_iterations=3)
    db = client.runtime.db
    sid = start(
        client,
        cfg,
        lambda sid: arm(faults, "evaluate.recorded", search_id=sid, iteration=1, split="dev"),
    )
    assert wait_finished(db, sid, cluster) == "completed"
    assert len(fired(faults, "evaluate.recorded")) == 7
    check_outcome(db, sid, ref_db, ref)


@pytest.mark.slow
def test_a_coordination_that_kills_its_worker_stops_at_the_cap_and_resumes(
    client: DistributedClient,
    cluster: Cluster,
    cluster_env: dict[str, str],
    faults: Path,
    tmp_path: Path,
) -> None:
    cfg, ref_db, ref = reference(tmp_path, "coordinator-killer", max_iterations=3)
    db = client.runtime.db
    # Three kills are armed: a fourth delivery would go through, so only the cap stops it.
    sid = start(
        client,
        cfg,
        lambda sid: arm(faults, "coordinate.started", times=3, search_id=sid, iteration=1),
    )
    assert wait_finished(db, sid, cluster, timeout=60) == "failed"
    assert len(fired(faults, "coordinate.started")) == 3
    reason = search_summary(db, sid).stop_reason or ""
    assert "coordination of iteration 1 was given up after 3 attempts (max_attempts = 3)" in reason
    its = iterations(db, sid)
    assert [(it.number, it.status) for it in its] == [(0, "applied"), (1, "evaluating")]
    assert its[1].coordination_attempts == 3

    # A person decides to try again: the cap starts over and the search ends as if nothing
    # had happened.
    result = CliRunner(env=swarmq_env(cluster_env)).invoke(main, ["resume", sid])
    assert result.exit_code == 0, result.output
    assert wait_finished(db, sid, cluster) == "completed"
    check_outcome(db, sid, ref_db, ref)


@pytest.mark.slow
def test_machine_lost_between_taking_a_message_and_claiming_it(
    client: DistributedClient,
    cluster: Cluster,
    redis_server: PrivateRedis,
    faults: Path,
    tmp_path: Path,
) -> None:
    import redis

    cfg, ref_db, ref = reference(
        tmp_path, "taken-and-lost", hook="slow", sleep=1.0, particles=4, max_iterations=1
    )
    db = client.runtime.db
    sid = submit(client, cfg)
    broker = redis.Redis.from_url(redis_server.url)
    # Both workers busy with the first two evaluations, two messages wait: take the next one
    # the way a worker does (into kombu's unacknowledged set, with its delivery time), and never
    # acknowledge it, as a machine that dies right after taking it. Redis would hand it out
    # again only after the visibility timeout, more than an hour later.
    wait_for(
        "two running evaluations",
        lambda: sum(e.status == "running" for e in evaluations(db, sid)) == 2,
        cluster,
    )
    raw = broker.rpop("swarmq.evaluate")
    assert raw is not None
    message = json.loads(raw)
    tag = message["properties"]["delivery_tag"]
    broker.hset("unacked", tag, json.dumps([message, "swarmq.evaluate", "swarmq.evaluate"]))
    broker.zadd("unacked_index", {tag: time.time()})
    taken = json.loads(base64.b64decode(message["body"]))[1]

    assert wait_finished(db, sid, cluster, timeout=60) == "completed"
    evs = check_outcome(db, sid, ref_db, ref)
    lost = next(e for e in evs if (e.iteration, e.particle) == (0, taken["particle"]))
    assert lost.dispatched_at is not None  # sent again by the reconciler


# --- lost servers -------------------------------------------------------------------------------


def _mid_iteration(db: Database, sid: str, iteration: int) -> Callable[[], bool]:
    """True once evaluations of ``iteration`` are running and others still wait."""

    def check() -> bool:
        evs = [e for e in evaluations(db, sid) if e.iteration == iteration and e.split == "dev"]
        states = [e.status for e in evs]
        return states.count("running") >= 1 and states.count("pending") >= 2

    return check


@pytest.mark.slow
def test_redis_restart_loses_the_queue_and_the_reconciler_recovers(
    client: DistributedClient,
    cluster: Cluster,
    redis_server: PrivateRedis,
    faults: Path,
    tmp_path: Path,
) -> None:
    cfg, ref_db, ref = reference(
        tmp_path, "redis-restart", hook="slow", sleep=0.3, particles=8, max_iterations=3
    )
    db = client.runtime.db
    sid = submit(client, cfg)
    wait_for("iteration 1 to be under way", _mid_iteration(db, sid, 1), cluster)
    redis_server.restart(down_for=1.0)  # nothing is kept: every waiting message is gone
    assert wait_finished(db, sid, cluster, timeout=120) == "completed"
    evs = check_outcome(db, sid, ref_db, ref)
    # The evaluations whose messages were lost were sent again by the reconciler.
    assert any(e.dispatched_at is not None and e.iteration == 1 for e in evs)


@pytest.mark.slow
def test_postgres_restart_mid_search(
    client: DistributedClient,
    cluster: Cluster,
    pg_server: PrivatePostgres,
    faults: Path,
    tmp_path: Path,
) -> None:
    cfg, ref_db, ref = reference(
        tmp_path, "postgres-restart", hook="slow", sleep=0.4, particles=8, max_iterations=3
    )
    db = client.runtime.db
    sid = submit(client, cfg)

    def both_just_started() -> list[EvaluationRow]:
        # Both workers started an evaluation of iteration 1 less than 0.1 s ago: no other
        # claim can happen before the server is down, and both finish while it is down.
        now = time.time()
        running = [e for e in evaluations(db, sid) if e.status == "running"]
        fresh = [
            e
            for e in running
            if e.iteration == 1 and e.started_at and now - e.started_at.timestamp() < 0.1
        ]
        return fresh if len(running) == 2 and len(fresh) == 2 else []

    in_flight = wait_for("two fresh evaluations of iteration 1", both_just_started, cluster)
    pg_server.restart("immediate", down_for=2.0)  # as if the server crashed
    assert wait_finished(db, sid, cluster, timeout=120) == "completed"
    # The two results that could not be recorded were lost with their attempt: their rows
    # stayed running, their heartbeat stopped, and the reconciler sent them again (a second
    # attempt, never a second result). Every message taken while the server was down was
    # acknowledged unrun; the reconciler sent those evaluations again too.
    check_outcome(
        db, sid, ref_db, ref, attempts={(e.iteration, e.particle, e.split): 2 for e in in_flight}
    )


# --- duplicate messages -------------------------------------------------------------------------


def _copy_evaluation_messages(url: str, stop: threading.Event, copied: set[str]) -> None:
    """Push a second copy of every evaluation message seen waiting in Redis: the same message
    (same task id, same body) delivered twice."""
    import redis

    broker = redis.Redis.from_url(url)
    while not stop.is_set():
        for raw in broker.lrange("swarmq.evaluate", 0, -1):
            task_id = json.loads(raw)["headers"]["id"]
            if task_id not in copied:
                copied.add(task_id)
                broker.lpush("swarmq.evaluate", raw)
        time.sleep(0.01)


@pytest.mark.slow
def test_every_message_delivered_twice(
    client: DistributedClient,
    cluster: Cluster,
    redis_server: PrivateRedis,
    faults: Path,
    tmp_path: Path,
) -> None:
    cfg, ref_db, ref = reference(tmp_path, "twice", hook="slow", sleep=0.2, max_iterations=3)
    db = client.runtime.db
    dispatcher = CeleryDispatcher(client.app)
    evaluate_before = received(cluster, "swarmq.evaluate")
    coordinate_before = received(cluster, "swarmq.coordinate")
    copied: set[str] = set()
    stop = threading.Event()
    copier = threading.Thread(
        target=_copy_evaluation_messages, args=(redis_server.url, stop, copied), daemon=True
    )
    copier.start()
    try:
        sid = submit(client, cfg)
        # Each coordination message again: once the iteration is complete (racing the
        # original), and once more after it is applied.
        sent: set[tuple[int, str]] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and search_summary(db, sid).status == "running":
            for it in iterations(db, sid):
                devs = [e for e in evaluations(db, sid) if e.iteration == it.number]
                moment = "applied" if it.applied_at else "complete"
                if moment == "complete" and not all(
                    e.status in FINISHED for e in devs if e.split == "dev"
                ):
                    continue
                if (it.number, moment) not in sent:
                    sent.add((it.number, moment))
                    dispatcher.send_coordination(sid, it.number)
            time.sleep(0.02)
        assert wait_finished(db, sid, cluster) == "completed"
    finally:
        stop.set()
        copier.join(timeout=5)
    evs = check_outcome(db, sid, ref_db, ref)
    assert len(copied) >= 5, "too few evaluation messages were seen waiting to copy them"
    assert all(it.coordination_attempts == 1 for it in iterations(db, sid) if it.applied_at)

    # A replay of every message of the finished search changes nothing.
    snapshot = [(e.id, e.status, e.utility, e.attempts, e.finished_at) for e in evs]
    for e in evs:
        dispatcher.send_evaluation(sid, e.iteration, e.particle, e.split)
    for it in iterations(db, sid):
        dispatcher.send_coordination(sid, it.number)
    total_evaluate = len(evs) + len(copied) + len(evs)
    wait_for(
        "every copy to be taken",
        lambda: received(cluster, "swarmq.evaluate") - evaluate_before >= total_evaluate,
        cluster,
    )
    assert received(cluster, "swarmq.coordinate") - coordinate_before >= 2 * len(sent)
    time.sleep(0.5)  # the last ones taken are done with
    after = evaluations(db, sid)
    assert [(e.id, e.status, e.utility, e.attempts, e.finished_at) for e in after] == snapshot
    check_outcome(db, sid, ref_db, ref)


# --- the artifact store -------------------------------------------------------------------------


def _fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its file system is full."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 20, 4096):  # then the last pages
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


def _server_side_unsupported(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what}; CI must run this test as root (tmpfs mounts)")
    pytest.skip(what)


@pytest.mark.slow
def test_full_artifact_store_fails_the_search_with_the_reason_and_resume_finishes(
    client: DistributedClient,
    cluster: Cluster,
    cluster_env: dict[str, str],
    store: Store,
    faults: Path,
    tmp_path: Path,
) -> None:
    if not store.mounted:
        _server_side_unsupported("a full file system needs a tmpfs mount (root)")
    cfg, ref_db, ref = reference(tmp_path, "full-store", hook="slow", sleep=0.1, max_iterations=5)
    db = client.runtime.db
    sid = submit(client, cfg)
    wait_for("iteration 2", lambda: search_summary(db, sid).iteration >= 2, cluster)
    filler = _fill(store.root)
    try:
        assert wait_finished(db, sid, cluster, timeout=60) == "failed"
        s = search_summary(db, sid)
        reason = s.stop_reason or ""
        assert f"coordination of iteration {s.iteration} failed: ArtifactError" in reason
        assert "No space left on device" in reason and "free space" in reason
        assert f"swarmq resume {sid}" in reason
        # Nothing half-applied: the iteration is complete and unapplied, there is no next one,
        # and no partial file was left in the store.
        its = iterations(db, sid)
        assert its[-1].number == s.iteration and its[-1].status == "evaluating"
        assert all(e.status == "done" for e in evaluations(db, sid))
        assert not list(store.root.rglob(".tmp-*"))
    finally:
        filler.unlink()
    result = CliRunner(env=swarmq_env(cluster_env)).invoke(main, ["resume", sid])
    assert result.exit_code == 0, result.output
    assert wait_finished(db, sid, cluster) == "completed"
    check_outcome(db, sid, ref_db, ref)


@contextlib.contextmanager
def unwritable_folder(path: Path) -> Iterator[Path]:
    """A store folder no one can write to.

    Root ignores file modes, so as root it is a read-only tmpfs, or, where mounting is not
    allowed, a file standing where the folder should be; for other users, mode 0555.
    """
    if os.geteuid() != 0:
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    path.mkdir(parents=True)
    if _mount_tmpfs(path, "ro,size=1m"):
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    path.rmdir()
    path.write_text("not a folder")
    yield path


def test_unwritable_artifact_store_refuses_the_search_whole(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config()
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with unwritable_folder(tmp_path / "store") as folder:
        for command in ("run", "submit"):
            result = _cli(db_url, folder, command, str(config))
            assert result.exit_code == 2, result.output
            assert "cannot write artifact" in result.output
            assert "writable" in result.output and "Traceback" not in result.output
    _assert_empty(db_url)


# --- bad input ----------------------------------------------------------------------------------


def _cli(db_url: str, artifacts: Path, *args: str) -> Any:
    """The CLI with a broker nobody listens on: input is refused before anything is sent."""
    return CliRunner().invoke(
        main,
        [
            "--db",
            db_url,
            "--artifacts",
            str(artifacts),
            "--broker",
            f"redis://127.0.0.1:{free_port()}/0",
            *args,
        ],
    )


def _assert_empty(db_url: str) -> None:
    """No half-created search: every table of the record is empty."""
    db = Database(db_url)
    existing = set(inspect(db.engine).get_table_names())  # none: refused before the schema
    with db.session() as s:
        for table in ("searches", "particles", "iterations", "particle_states", "evaluations"):
            if table in existing:
                assert s.execute(text(f"select count(*) from {table}")).scalar() == 0, table
    db.engine.dispose()


def _bad_configs(
    tmp_path: Path, write_config: Callable[..., Path], world: dict[str, Path]
) -> list[tuple[Path, str]]:
    """Search files with one problem each, and what the error must say."""
    good = write_config("good.toml").read_text()

    def variant(name: str, old: str, new: str) -> Path:
        assert old in good
        path = tmp_path / name
        path.write_text(good.replace(old, new))
        return path

    wrong_shape = tmp_path / "shape.json"
    wrong_shape.write_text(json.dumps({"dataset": "x", "dev": {"question": "q"}, "test": []}))
    no_answer = tmp_path / "no_answer.json"
    no_answer.write_text(
        json.dumps({"dataset": "x", "dev": [{"question": "q"}], "test": [{"question": "q"}]})
    )
    experts, base = json.dumps(str(world["experts"])), json.dumps(str(world["base"]))
    return [
        (variant("malformed.toml", "[swarm]", "[swarm"), "malformed.toml: not valid TOML"),
        (write_config("field.toml", swarm={"inertai": 0.2}), "swarm.inertai: unknown field"),
        (write_config("u.toml", objective={"utility": "telepathy"}), "unknown utility 'telepathy'"),
        (
            write_config("d.toml", objective={"dataset": str(tmp_path / "nope.json")}),
            "nope.json' does not exist",
        ),
        (write_config("w.toml", objective={"dataset": str(wrong_shape)}), "'dev' is a JSON dict"),
        (
            write_config("k.toml", objective={"dataset": str(no_answer)}),
            "dev[0] has no key 'choices'",
        ),
        (
            variant("mismatched.toml", experts, json.dumps(str(_mismatched_pool(tmp_path)))),
            "does not share the layout",
        ),
        (
            variant("pickled.toml", experts, json.dumps(str(_pickled_pool(tmp_path, world)))),
            "pickled weights",
        ),
        (
            variant("base.toml", base, json.dumps(str(tmp_path / "no-such-model"))),
            "no-such-model' does not exist",
        ),
        (
            variant("not-a-model.toml", base, json.dumps(str(world["experts"]))),
            "is not a model folder (it holds no config.json)",
        ),
        (
            variant("device.toml", 'device = "cpu"', 'device = "gpu0"'),
            "base_model.device 'gpu0' is not a device",
        ),
        (
            _chat_template_config(tmp_path, good),
            "chat_template = true, but the tokenizer of base model",
        ),
    ]


SCORER = "def score(prompts, responses):\n    return [0.0 for _ in prompts]\n"


def _chat_template_config(tmp_path: Path, good: str) -> Path:
    """A reward_model search asking for the base model's chat template, which it lacks."""
    scorer = tmp_path / "scorer.py"
    scorer.write_text(SCORER)
    data = tmp_path / "prompts.json"
    data.write_text(
        json.dumps({"dataset": "p", "dev": [{"prompt": "a"}], "test": [{"prompt": "b"}]})
    )
    text = good.split("[objective]")[0] + (
        f'[objective]\nutility = "reward_model"\ndataset = {json.dumps(str(data))}\n'
        f"[objective.options]\nscorer = {json.dumps(f'{scorer}:score')}\nchat_template = true\n"
    )
    path = tmp_path / "chat.toml"
    path.write_text(text)
    return path


def _mismatched_pool(tmp_path: Path) -> Path:
    root = tmp_path / "mismatched"
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for k, shape in enumerate([(3, 4), (3, 4), (4, 3)]):
        tensors = {"a.weight": rng.normal(size=(6,)).astype(np.float32)}
        tensors["b.weight"] = rng.normal(size=shape).astype(np.float32)
        save_file(tensors, str(root / f"e{k}.safetensors"))
    return root


def _pickled_pool(tmp_path: Path, world: dict[str, Path]) -> Path:
    """A copy of the experts whose last adapter is a pickled adapter_model.bin."""
    root = tmp_path / "pickled"
    shutil.copytree(world["experts"], root, dirs_exist_ok=True)
    last = sorted(root.iterdir())[-1]
    (last / "adapter_model.safetensors").unlink(missing_ok=True)
    (last / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    return root


@pytest.mark.parametrize("command", ["run", "submit"])
def test_bad_input_is_refused_whole_with_the_reason(
    command: str,
    tmp_path: Path,
    write_config: Callable[..., Path],
    tiny_world: dict[str, Path],
) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    if command == "submit":  # the distributed mode needs the schema made first (db upgrade)
        Database(db_url).upgrade()
    for config, needle in _bad_configs(tmp_path, write_config, tiny_world):
        result = _cli(db_url, tmp_path / "art", command, str(config))
        assert result.exit_code == 2, (config.name, result.output)
        assert needle in result.output, (config.name, result.output)
        assert "Traceback" not in result.output
        _assert_empty(db_url)
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").rglob("*.safetensors"))


def test_a_device_missing_here_is_refused_by_run_before_anything_is_written(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    # `run` evaluates in this process: a GPU this machine lacks is refused at creation. (A
    # search submitted to workers is not judged by the submitting machine's devices.)
    config = write_config("gpu.toml")
    config.write_text(config.read_text().replace('device = "cpu"', 'device = "cuda:99"'))
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    result = _cli(db_url, tmp_path / "art", "run", str(config))
    assert result.exit_code == 2, result.output
    assert "device 'cuda:99'" in result.output and "Traceback" not in result.output
    _assert_empty(db_url)


def test_unknown_search_id_is_named_by_every_command(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    commands = [
        ["status", "nope"],
        ["resume", "nope", "--embedded"],
        ["resume", "nope"],
        ["cancel", "nope"],
        ["watch", "nope"],
        ["export", "nope", "--out", str(tmp_path / "out")],
        ["history", "nope"],
        ["report", "nope", "--out", str(tmp_path / "report")],
        ["audit", "nope"],
    ]
    assert _cli(db_url, tmp_path / "art", "db", "upgrade").exit_code == 0
    for args in commands:
        result = _cli(db_url, tmp_path / "art", *args)
        assert result.exit_code == 2, (args, result.output)
        assert "search 'nope' does not exist" in result.output, (args, result.output)
        assert "Traceback" not in result.output
    _assert_empty(db_url)
    assert not (tmp_path / "out").exists() and not (tmp_path / "report").exists()


def test_corrupted_artifact_fails_the_search_naming_it(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    from swarmq.config import load_config

    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner = EmbeddedRunner(Settings(db_url, tmp_path / "art"))
    sid = runner.submit(load_config(write_config()))
    with runner.runtime.db.session() as s:
        state = s.get(ParticleStateRow, (sid, 0, 3))
        assert state is not None
        digest = state.position_hash
    path = tmp_path / "art" / digest[:2] / f"{digest}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last float
    path.write_bytes(bytes(data))

    result = CliRunner().invoke(
        main, ["--db", db_url, "--artifacts", str(tmp_path / "art"), "resume", sid, "--quiet"]
    )
    assert result.exit_code == 2, result.output
    assert f"artifact {digest}" in result.output and "corrupted" in result.output
    assert "Traceback" not in result.output
    s = search_summary(runner.runtime.db, sid)
    assert s.status == "failed" and digest in (s.stop_reason or "")
    evs = evaluations(runner.runtime.db, sid)
    (bad,) = [e for e in evs if e.status == "failed"]
    assert bad.particle == 3 and bad.attempts == 1 and "corrupted" in (bad.error or "")
    # Nothing moved on: iteration 0 is not applied, and no other row failed.
    assert [it.status for it in iterations(runner.runtime.db, sid)] == ["evaluating"]
    assert all(e.status in ("done", "pending") for e in evs if e is not bad)


@pytest.mark.slow
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_utility_fails_the_search_with_the_reason(
    value: str,
    cluster_env: dict[str, str],
    cluster: Cluster,
    client: DistributedClient,
    faults: Path,
    tmp_path: Path,
) -> None:
    pool = make_pool(tmp_path / "pool", 3)
    data = tmp_path / "data.json"
    item = {"question": "q", "answer": "a"}
    data.write_text(json.dumps({"dataset": "x", "dev": [item], "test": [item]}))
    config = tmp_path / "search.toml"
    # fault_hooks picks the non-finite utility by the search's name.
    config.write_text(
        f'[search]\nname = "returns-{value}"\nmax_iterations = 2\n'
        f'[experts]\npath = "{pool}"\n[base_model]\npath = "unused"\n'
        f'[objective]\nutility = "exact_match"\ndataset = "{data}"\n'
    )
    runner = CliRunner(env=swarmq_env(cluster_env))
    result = runner.invoke(main, ["submit", str(config)])
    assert result.exit_code == 0, result.output
    sid = result.stdout.strip()
    db = client.runtime.db
    assert wait_finished(db, sid, cluster) == "failed"
    shown = runner.invoke(main, ["status", sid])
    assert shown.exit_code == 0, shown.output
    shown_text = " ".join(shown.output.split())  # rich wraps long lines
    assert "stopped: evaluation of particle" in shown_text
    assert f"returned {value}; a utility must be a finite number" in shown_text
    evs = evaluations(db, sid)
    failed = [e for e in evs if e.status == "failed"]
    # A non-finite utility fails the same way every time: no retry, attempts 1.
    assert failed and all(e.attempts == 1 and "finite" in (e.error or "") for e in failed)
    assert [it.number for it in iterations(db, sid)] == [0]
