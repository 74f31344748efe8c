"""Benchmark: where an evaluation's bookkeeping time goes, in one process on PostgreSQL.

``run_evaluation`` and ``coordinate_iteration`` run here directly (no broker, no Celery), with
a no-op utility, on a fresh PostgreSQL database, so that what is timed is the claim and record
transactions, the artifact read and hash check, and the heartbeat thread's start and stop.
Every SQL statement is counted and timed (SQLAlchemy's cursor events); the transactions'
BEGIN and COMMIT and the connection pool's ping are round trips too, counted apart.

Run (PostgreSQL on 127.0.0.1)::

    .venv/bin/python benchmarks/bench_bookkeeping.py [--particles 40] [--repeats 3]

It creates and drops its own database (``swarmq_bookkeeping_*``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_distributed import (  # noqa: E402  (the benchmark folder is not a package)
    evaluate,
    fresh_database,
    make_pool,
    search_config,
)


class Recorder:
    """A dispatcher that sends nothing: the messages are not part of this measurement."""

    def send_evaluation(self, search_id: str, iteration: int, particle: int, split: str) -> None:
        pass

    def send_coordination(self, search_id: str, iteration: int) -> None:
        pass


def one_run(url: str, root: Path, particles: int) -> dict[str, Any]:
    from sqlalchemy import event

    from swarmq.engine import (
        EvaluationPolicy,
        Runtime,
        coordinate_iteration,
        create_search,
        run_evaluation,
    )
    from swarmq.storage import Database, LocalArtifactStore

    db = Database(url)
    rt = Runtime(db=db, store=LocalArtifactStore(root / "artifacts"), dispatcher=Recorder())
    rt.evaluate = evaluate
    pool = make_pool(root / "pool", 4)
    cfg = search_config(pool, "bookkeeping", particles=particles, iterations=3, options={})
    sid = create_search(rt, cfg, check_objective=False)
    # The workers' policy: heartbeats on, transient errors retried.
    policy = EvaluationPolicy(
        max_attempts=3, heartbeat_interval=1.0, heartbeat_timeout=5.0, retry_transient=True
    )
    run_evaluation(rt, sid, 0, 0, "dev", policy=policy)  # warm: connections, caches

    statements: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}

    @event.listens_for(db.engine, "before_cursor_execute")
    def _before(*_: Any) -> None:
        started["t"] = time.perf_counter()

    @event.listens_for(db.engine, "after_cursor_execute")
    def _after(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        statements[" ".join(words[:3] if words[0] == "SELECT" else words[:2])].append(
            time.perf_counter() - started["t"]
        )

    reads: list[float] = []
    store = rt.store
    t0 = time.perf_counter()
    for p in range(1, particles):
        run_evaluation(rt, sid, 0, p, "dev", policy=policy)
    per_evaluation = (time.perf_counter() - t0) / (particles - 1)
    evaluation_statements = {k: list(v) for k, v in statements.items()}
    statements.clear()

    from sqlalchemy import select

    from swarmq.storage import EvaluationRow

    with db.session() as s:
        hashes = list(s.scalars(select(EvaluationRow.position_hash)))
    for h in hashes:
        t = time.perf_counter()
        store.get_vector(h)
        reads.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    coordinate_iteration(rt, sid, 0)
    coordination = time.perf_counter() - t0
    db.engine.dispose()
    return {
        "per_evaluation": per_evaluation,
        "statements": evaluation_statements,
        "evaluations": particles - 1,
        "read": statistics.median(reads),
        "coordination": coordination,
        "coordination_statements": sum(len(v) for v in statements.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="an admin URL of the PostgreSQL server (a database is created and dropped on it)",
    )
    ap.add_argument("--particles", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from swarmq.storage import Database

    runs = []
    for _ in range(args.repeats):
        with (
            tempfile.TemporaryDirectory(prefix="swarmq-bookkeeping-") as tmp,
            fresh_database(args.postgres, "swarmq_bookkeeping") as url,
        ):
            db = Database(url)
            db.upgrade()
            db.engine.dispose()
            runs.append(one_run(url, Path(tmp), args.particles))

    n = runs[0]["evaluations"]
    print(
        f"{n} no-op evaluations per run, {args.repeats} runs (medians), in one process on "
        "PostgreSQL, heartbeats on"
    )
    print("| what | per evaluation |")
    print("| --- | --- |")
    each = ", ".join(f"{1000 * r['per_evaluation']:.1f}" for r in runs)
    per = statistics.median(r["per_evaluation"] for r in runs)
    print(f"| claim, evaluate, record (whole `run_evaluation`) | {1000 * per:.1f} ms ({each}) |")
    for name in runs[0]["statements"]:
        count = len(runs[0]["statements"][name]) / n
        mean = statistics.median(
            statistics.mean(r["statements"][name]) for r in runs if r["statements"].get(name)
        )
        print(f"| `{name} ...` | {count:g} x {1000 * mean:.2f} ms |")
    total = sum(len(v) for v in runs[0]["statements"].values()) / n
    print(
        f"| SQL statements | {total:g}, plus each transaction's BEGIN and COMMIT and a pool "
        "ping per connection taken |"
    )
    print(
        f"| artifact read and sha256 check (`get_vector`) | "
        f"{1000 * statistics.median(r['read'] for r in runs):.3f} ms |"
    )
    print(
        f"coordination of {args.particles} particles: "
        f"{1000 * statistics.median(r['coordination'] for r in runs):.0f} ms, "
        f"{runs[0]['coordination_statements']} SQL statements"
    )


if __name__ == "__main__":
    main()
