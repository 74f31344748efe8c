"""Benchmark: how fast the distributed mode recovers from a lost worker and a lost broker queue.

Real ``swarmq worker`` processes with the default reliability settings (heartbeat every
second, dead after 5 s, a reconciler pass every 2 s, a dispatch grace of 5 s), PostgreSQL as
the record and a redis-server of the benchmark's own (no persistence, on a free port: it is
restarted, which must not touch a shared one). The model is replaced by
``bench_distributed.evaluate`` sleeping a fixed time. Three measurements, in one run:

(a) a worker lost with its machine: two evaluation workers each run one evaluation; the whole
    process tree of one is killed (SIGKILL); measured is the time from the kill to the moment
    its evaluation runs again on the other worker (its second claim, by the database's clock);
(b) a broker restart that loses the queue: two evaluation workers run two evaluations while
    more wait in Redis; Redis is stopped and started empty; measured is the time from Redis
    being back to the first claim of an evaluation whose message was lost;
(c) slow but live: evaluations three times as long as the heartbeat timeout run to the end
    on their first attempt (none is declared dead, none runs twice).

Run (PostgreSQL on 127.0.0.1, ``redis-server`` on the PATH)::

    .venv/bin/python benchmarks/bench_recovery.py

It creates and drops its own PostgreSQL database (``swarmq_recovery_*``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_distributed import (  # noqa: E402  (the benchmark folder is not a package)
    HOOK,
    Cluster,
    evaluation_rows,
    fresh_database,
    make_pool,
    search_config,
    wait_for,
)


class Redis:
    """A redis-server of this benchmark only, keeping nothing on disk (a restart empties it)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on the PATH; install it (apt install redis)")
        self.binary = binary
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@dataclass(frozen=True)
class Recovery:
    seconds: float
    attempts: list[int]  # of every evaluation of the search, at the end


def _rows(db: Any, sid: str) -> list[Any]:
    return [e for e in evaluation_rows(db, sid) if e.split == "dev" and e.iteration == 0]


def _settle(db: Any, sid: str, client: Any) -> list[int]:
    """Cancel the search, wait for its running evaluations to end; the dev attempts."""
    client.cancel(sid)
    wait_for(
        "running evaluations to end",
        lambda: not any(e.status == "running" for e in evaluation_rows(db, sid)),
        60,
    )
    return [e.attempts for e in _rows(db, sid)]


def worker_lost(cluster: Cluster, client: Any, pool: Path, seconds: float) -> Recovery:
    db = client.runtime.db
    cfg = search_config(
        pool,
        "lost-worker",
        particles=2,
        iterations=2,
        options={"hook": "sleep", "seconds": seconds},
    )
    sid = client.submit(cfg, check_objective=False)
    wait_for(
        "both evaluations running", lambda: sum(e.status == "running" for e in _rows(db, sid)) == 2
    )
    victim_pids = {str(p) for p in [cluster.procs["a"].pid]}
    # The evaluation held by a process of worker "a" (its pool process is a descendant).
    from bench_distributed import _descendants

    victim_pids |= {str(p) for p in _descendants(cluster.procs["a"].pid)}
    held = [e for e in _rows(db, sid) if (e.worker or "").rpartition(":")[2] in victim_pids]
    assert len(held) == 1, [e.worker for e in _rows(db, sid)]
    particle = held[0].particle
    killed_at = datetime.now(UTC)
    cluster.kill("a")

    def again() -> bool:
        row = next(e for e in _rows(db, sid) if e.particle == particle)
        return row.attempts >= 2 and row.status in ("running", "done")

    wait_for("the evaluation to run again", again, 60)
    row = next(e for e in _rows(db, sid) if e.particle == particle)
    took = (row.started_at - killed_at).total_seconds()
    attempts = _settle(db, sid, client)
    cluster.start("a", "--concurrency", "1")
    cluster.wait_ready("a")
    return Recovery(took, attempts)


def queue_lost(cluster: Cluster, client: Any, pool: Path, redis: Redis, seconds: float) -> Recovery:
    db = client.runtime.db
    cfg = search_config(
        pool, "lost-queue", particles=8, iterations=2, options={"hook": "sleep", "seconds": seconds}
    )
    sid = client.submit(cfg, check_objective=False)
    wait_for(
        "two evaluations running", lambda: sum(e.status == "running" for e in _rows(db, sid)) == 2
    )
    waiting = {e.particle for e in _rows(db, sid) if e.status == "pending"}
    redis.stop()
    redis.start()
    back = datetime.now(UTC)

    def resumed() -> bool:
        return any(e.particle in waiting and e.started_at is not None for e in _rows(db, sid))

    wait_for("a lost evaluation to run", resumed, 120)
    first = min(
        e.started_at for e in _rows(db, sid) if e.particle in waiting and e.started_at is not None
    )
    attempts = _settle(db, sid, client)
    return Recovery((first - back).total_seconds(), attempts)


def slow_but_live(client: Any, pool: Path, seconds: float) -> list[int]:
    db = client.runtime.db
    cfg = search_config(
        pool, "slow", particles=2, iterations=2, options={"hook": "sleep", "seconds": seconds}
    )
    sid = client.submit(cfg, check_objective=False)
    wait_for(
        "both slow evaluations done",
        lambda: all(e.status == "done" for e in _rows(db, sid)),
        4 * seconds + 60,
    )
    return _settle(db, sid, client)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="an admin URL of the PostgreSQL server (a database is created and dropped on it)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="repeats of (a) and (b)")
    ap.add_argument("--seconds", type=float, default=4.0, help="(a), (b): evaluation seconds")
    args = ap.parse_args()

    from swarmq.execution import DistributedClient
    from swarmq.settings import load_settings

    redis = Redis()
    redis.start()
    with (
        tempfile.TemporaryDirectory(prefix="swarmq-recovery-") as tmp,
        fresh_database(args.postgres, "swarmq_recovery") as url,
    ):
        root = Path(tmp)
        from swarmq.storage import Database

        db = Database(url)
        db.upgrade()
        db.engine.dispose()
        pool = make_pool(root / "pool", 2)
        base = {k: v for k, v in os.environ.items() if not k.startswith("SWARMQ_")}
        env = base | {
            "SWARMQ_DATABASE_URL": url,
            "SWARMQ_BROKER_URL": redis.url,
            "SWARMQ_ARTIFACTS": str(root / "artifacts"),
            "SWARMQ_EVALUATE": HOOK,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), base.get("PYTHONPATH")])),
        }
        settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("SWARMQ_")})
        client = DistributedClient(settings)
        cluster = Cluster(env, root)
        try:
            cluster.start("coordinator", "--coordinator")
            cluster.start("a", "--concurrency", "1")
            cluster.start("b", "--concurrency", "1")
            for name in ("coordinator", "a", "b"):
                cluster.wait_ready(name)
            lost_worker = [
                worker_lost(cluster, client, pool, args.seconds) for _ in range(args.repeats)
            ]
            lost_queue = [
                queue_lost(cluster, client, pool, redis, args.seconds) for _ in range(args.repeats)
            ]
            slow = slow_but_live(client, pool, 3 * settings.heartbeat_timeout)
        finally:
            cluster.stop_all()
            client.runtime.db.engine.dispose()
            redis.stop()

    print(
        f"settings: heartbeat_interval {settings.heartbeat_interval:g} s, heartbeat_timeout "
        f"{settings.heartbeat_timeout:g} s, reconcile_interval {settings.reconcile_interval:g} s, "
        f"dispatch_grace {settings.dispatch_grace:g} s"
    )
    print("| fault | seconds to the evaluation running again (each run) | median | attempts |")
    print("| --- | --- | --- | --- |")
    for name, runs in (
        ("(a) a worker's process tree killed (from the kill)", lost_worker),
        ("(b) Redis restarted empty (from Redis back)", lost_queue),
    ):
        each = ", ".join(f"{r.seconds:.2f}" for r in runs)
        attempts = sorted({a for r in runs for a in r.attempts})
        print(
            f"| {name} | {each} | {statistics.median(r.seconds for r in runs):.2f} | {attempts} |"
        )
    print(
        f"(c) slow but live: evaluations of {3 * settings.heartbeat_timeout:g} s (3x the "
        f"heartbeat timeout), attempts {slow} (1 each: none declared dead)"
    )


if __name__ == "__main__":
    main()
