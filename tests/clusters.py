"""Real processes and servers for the tests of the distributed mode and its faults.

``Cluster`` runs ``swarmq worker`` processes; ``PrivateRedis`` and ``PrivatePostgres`` are
servers of the test's own, on free ports, that a test may stop, kill and restart without
touching the machine's shared ones; the search helpers build closed-form searches and compare
a distributed result with the embedded reference run of the same configuration.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import distributed_hooks
import pytest
import searches
from conftest import _server_missing
from searches import make_pool
from sqlalchemy import select

from swarmq.config import SearchConfig
from swarmq.engine import (
    best_history,
    create_search,
    final_report,
    search_summary,
    utility_histories,
)
from swarmq.execution import DistributedClient, EmbeddedRunner
from swarmq.settings import Settings, load_settings
from swarmq.storage import Database, EvaluationRow

__all__ = [
    "TIMINGS",
    "Cluster",
    "PrivatePostgres",
    "PrivateRedis",
    "children",
    "closed_form",
    "embedded_reference",
    "evaluations",
    "free_port",
    "kill_tree",
    "make_pool",
    "running_cluster",
    "same_result",
    "wait_finished",
    "worker_env",
]

# Shrunk so that failures are found in seconds: heartbeat every 0.3 s, dead after 2 s,
# reconciler every second.
TIMINGS = {
    "SWARMQ_HEARTBEAT_INTERVAL": "0.3",
    "SWARMQ_HEARTBEAT_TIMEOUT": "2",
    "SWARMQ_RECONCILE_INTERVAL": "1",
    "SWARMQ_DISPATCH_GRACE": "1",
    "SWARMQ_MAX_ATTEMPTS": "3",
    "SWARMQ_SOFT_TIME_LIMIT": "60",
    "SWARMQ_TIME_LIMIT": "90",
}


# --- processes ----------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and all its descendants at once (a machine that dies)."""
    for pid in [proc.pid, *children(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


class Cluster:
    """``swarmq worker`` processes with a shared environment; logs in ``logs/``."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.args: dict[str, tuple[str, ...]] = {}
        # "ready" lines in each log before its latest start: a restarted worker appends.
        self._readies: dict[str, int] = {}

    def start(self, name: str, *args: str, ready: bool = True) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        self._readies[name] = (
            log.read_text(errors="replace").count(" ready.") if log.exists() else 0
        )
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "swarmq", "worker", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name], self.args[name] = proc, args
        if ready:
            self.wait_ready(name)
        return proc

    def wait_ready(self, name: str, timeout: float = 60) -> None:
        log = self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.read_text(errors="replace").count(" ready.") > self._readies.get(name, 0):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"worker {name} did not start:\n{self.tail(name)}")

    def restart(self, name: str, *, ready: bool = True) -> subprocess.Popen[bytes]:
        """Start ``name`` again with its arguments (after :meth:`kill`)."""
        return self.start(name, *self.args[name], ready=ready)

    def tail(self, name: str, lines: int = 40) -> str:
        log = self.logs / f"{name}.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def tails(self) -> str:
        return "\n".join(f"--- {n}\n{self.tail(n, 15)}" for n in self.procs)

    def kill(self, name: str) -> None:
        kill_tree(self.procs.pop(name))

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_tree(proc)
        self.procs.clear()


def worker_env(
    root: Path,
    *,
    database: str,
    broker: str,
    evaluate: str,
    artifacts: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a test's worker processes.

    This process's environment without its ``SWARMQ_*`` settings, the shrunk :data:`TIMINGS`,
    the servers, the evaluation hook ``evaluate`` (a ``module:function`` of this folder, which
    goes on ``PYTHONPATH``), artifacts in ``root/artifacts`` unless given, logs in ``root``
    (``LOGS``); ``extra`` comes last and wins.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMQ_")}
    path = os.pathsep.join([str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")])
    return (
        env
        | TIMINGS
        | {
            "SWARMQ_DATABASE_URL": database,
            "SWARMQ_BROKER_URL": broker,
            "SWARMQ_ARTIFACTS": str(artifacts or root / "artifacts"),
            "SWARMQ_EVALUATE": evaluate,
            "PYTHONPATH": path.rstrip(os.pathsep),
            "HF_HUB_OFFLINE": "1",
            "LOGS": str(root),
        }
        | dict(extra or {})
    )


def swarmq_env(env: Mapping[str, str]) -> dict[str, str]:
    """Only the ``SWARMQ_*`` settings of ``env``: what a client or the CLI needs to reach the
    cluster's servers."""
    return {k: v for k, v in env.items() if k.startswith("SWARMQ_")}


def cluster_client(env: Mapping[str, str]) -> DistributedClient:
    """A client of the cluster whose worker environment is ``env``."""
    return DistributedClient(load_settings(environ=swarmq_env(env)))


@contextlib.contextmanager
def running_cluster(
    env: dict[str, str], evaluation_workers: tuple[str, ...] = ("eval-a", "eval-b")
) -> Iterator[Cluster]:
    """A coordinator and ``evaluation_workers`` started together; all stopped afterwards."""
    c = Cluster(env, Path(env["LOGS"]))
    try:
        c.start("coordinator", "--coordinator", ready=False)
        for name in evaluation_workers:
            c.start(name, ready=False)
        for name in ("coordinator", *evaluation_workers):
            c.wait_ready(name)
        yield c
    finally:
        c.stop_all()


# --- private servers ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    """A server binary from PATH or PostgreSQL's versioned folder; missing fails in CI."""
    found = shutil.which(name)
    if found is None:
        versions = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        found = str(versions[-1]) if versions else None
    if found is None:
        _server_missing(f"the {name} program", FileNotFoundError(name))
    assert found is not None
    return found


class PrivateRedis:
    """A redis-server of this test only, keeping nothing on disk (a restart empties it)."""

    def __init__(self, *, password: str | None = None) -> None:
        self.binary = _binary("redis-server")
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception as err:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    _server_missing(f"a private redis-server on port {self.port}", err)
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        """Shut down (without saving: every message it held is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


class PrivatePostgres:
    """A PostgreSQL cluster of this test only, in a temporary folder, on a free port.

    PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres``
    user and its commands run as that user.
    """

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="swarmq-pg-"))
        self.data = self.root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as err:
                _server_missing("a 'postgres' user to run a private PostgreSQL as root", err)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.user = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv, user=self.user, capture_output=True, check=check, timeout=120, cwd=self.root
        )

    def start(self) -> PrivatePostgres:
        try:
            if not self.data.exists():
                self._run(
                    self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                    "--no-sync", "-E", "UTF8",
                )  # fmt: skip
            # fsync off only matters if the machine itself crashes; commits stay synchronous,
            # so that an immediate stop (a server crash) loses no committed transaction.
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.root} -c fsync=off "
                "-c full_page_writes=off -c max_connections=200"
            )
            self._run(
                self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"),
                "-w", "-t", "60", "-o", options, "start",
            )  # fmt: skip
        except subprocess.CalledProcessError as err:
            log = self.root / "server.log"
            detail = (err.stderr or b"").decode(errors="replace")
            if log.exists():
                detail += log.read_text(errors="replace")[-2000:]
            _server_missing(f"a private PostgreSQL on port {self.port}", RuntimeError(detail))
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown; ``immediate``: as if the server crashed."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "immediate", down_for: float = 0.0) -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def create_database(self, name: str) -> str:
        """A new database at the latest schema; returns its URL."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = make_url(self.url).set(database=name).render_as_string(hide_password=False)
        db = Database(url)
        db.upgrade()
        db.engine.dispose()
        return url

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- searches -----------------------------------------------------------------------------------


def closed_form(
    pool: Path,
    name: str,
    hook: str = "distance",
    *,
    swarm: dict[str, Any] | None = None,
    **search: Any,
) -> SearchConfig:
    """A closed-form search named ``name`` whose workers run ``hook`` (see distributed_hooks;
    ``sleep=`` seconds for the slow hook)."""
    options = {"hook": hook, "sleep": search.pop("sleep", 0.0)}
    return searches.closed_form(
        pool, swarm=swarm, objective={"options": options}, name=name, **search
    )


def wait_finished(db: Database, sid: str, cluster: Cluster, timeout: float = 90) -> str:
    """Wait until the search stopped and its final evaluations ran; returns its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = search_summary(db, sid)
        with db.session() as session:
            open_ = session.scalar(
                select(EvaluationRow.id)
                .where(
                    EvaluationRow.search_id == sid,
                    EvaluationRow.status.in_(("pending", "running")),
                )
                .limit(1)
            )
        if s.status in ("failed", "cancelled") or (s.status == "completed" and open_ is None):
            return s.status
        time.sleep(0.2)
    pytest.fail(f"search {sid} did not finish in {timeout}s\n{cluster.tails()}")


def evaluations(db: Database, sid: str) -> list[EvaluationRow]:
    with db.session() as s:
        return list(
            s.scalars(
                select(EvaluationRow)
                .where(EvaluationRow.search_id == sid)
                .order_by(EvaluationRow.split, EvaluationRow.iteration, EvaluationRow.particle)
            )
        )


def embedded_reference(tmp: Path, cfg: SearchConfig) -> tuple[Database, str]:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp / 'ref.sqlite'}", tmp / "ref-art"),
        evaluate=distributed_hooks.distance_utility,
    )
    sid = create_search(runner.runtime, cfg, check_objective=False)
    runner.drive(sid)
    return runner.runtime.db, sid


def same_result(db_a: Database, a: str, db_b: Database, b: str) -> None:
    assert utility_histories(db_a, a) == utility_histories(db_b, b)
    assert best_history(db_a, a) == best_history(db_b, b)
    fa, fb = final_report(db_a, a), final_report(db_b, b)
    assert fa is not None and fb is not None
    assert vars(fa.global_best) == vars(fb.global_best)
    assert vars(fa.best_expert) == vars(fb.best_expert)
    sa, sb = search_summary(db_a, a), search_summary(db_b, b)
    assert (sa.status, sa.stop_reason, sa.iteration) == (sb.status, sb.stop_reason, sb.iteration)
