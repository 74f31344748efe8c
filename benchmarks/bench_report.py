"""Benchmark: report rendering and audit of a long search, against plain reading of its artifacts.

A real search is recorded first, through the engine (``create_search``, ``run_evaluation``,
``coordinate_iteration``) with a closed-form utility (minus the squared distance to a hidden
target) instead of a model, and evaluations attributed round-robin to eight worker names. The
record is exactly what a model-backed search writes; only the utility is cheap. To build it
quickly, fsync is switched off for the build (SQLite ``synchronous=OFF`` and no ``os.fsync`` in
the artifact store); the build is not what is measured, and the measured steps only read.

Measured in the same run, each the median of ``--repeat`` runs on a warm page cache:

* ``report``: ``write_report`` (read the record, draw the six PNG figures, write the page);
* ``plain read``: every distinct artifact of the search read once and verified
  (``ArtifactStore.get_vector``: read, sha256, decode), the floor of any audit; also on two
  threads, since the audit reads ahead on two threads;
* ``audit``: ``audit_search``, which recomputes every update and checks every hash.

Run: ``.venv/bin/python benchmarks/bench_report.py [--particles 50] [--iterations 1000]
[--params 256] [--workdir DIR]`` (a given ``--workdir`` keeps the recorded search for reuse).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from sqlalchemy import event, select

from swarmq.config import parse_config
from swarmq.engine import Runtime, coordinate_iteration, create_search, run_evaluation
from swarmq.reporting import audit_search, history_rows, write_csv, write_report
from swarmq.storage import Database, LocalArtifactStore, ParticleStateRow, SearchRow


class _NoDispatch:
    """The benchmark drives every step itself; messages are dropped."""

    def send_evaluation(self, search_id: str, iteration: int, particle: int, split: str) -> None:
        pass

    def send_coordination(self, search_id: str, iteration: int) -> None:
        pass


def build(root: Path, particles: int, iterations: int, params: int) -> tuple[Database, str]:
    """Record a search of ``iterations`` iterations (0..iterations-1) by ``particles``."""
    url = f"sqlite:///{root / 'db.sqlite'}"
    db = Database(url)
    db.check_schema(create=True)
    with db.session() as s:
        done = s.scalar(select(SearchRow.id).where(SearchRow.status == "completed"))
    if done is not None:
        return db, done

    @event.listens_for(db.engine, "connect")
    def _fast(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=OFF")

    db.engine.dispose()
    experts = root / "experts"
    experts.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(10):
        save_file(
            {"w": rng.standard_normal(params, dtype=np.float32)},
            str(experts / f"e{k:02d}.safetensors"),
        )
    target = rng.standard_normal(params, dtype=np.float32)

    def utility(
        _c: Any, _a: Any, _l: Any, vector: np.ndarray, _s: str
    ) -> tuple[float, dict[str, Any]]:
        return float(-np.sum((vector - target) ** 2)), {}

    rt = Runtime(db, LocalArtifactStore(root / "art"), _NoDispatch(), evaluate=utility)
    cfg = parse_config(
        {
            "search": {"particles": particles, "max_iterations": iterations - 1, "seed": 1},
            "experts": {"path": str(experts)},
            "base_model": {"path": "unused"},
            "objective": {"utility": "exact_match", "dataset": str(root / "unused.json")},
            # No early stop; restarts after 20 iterations without improvement; some dropout.
            "swarm": {
                "patience": iterations + 1,
                "restart_patience": 20 / (iterations + 1),
                "dropout_n": 0.02,
            },
        }
    )
    sync, os.fsync = os.fsync, lambda _fd: None  # the build only: see the module doc
    try:
        sid = create_search(rt, cfg, check_objective=False)
        t0 = time.perf_counter()
        for t in range(iterations):
            with db.session() as s:
                todo = [
                    p
                    for (p,) in s.execute(
                        select(ParticleStateRow.particle).where(
                            ParticleStateRow.search_id == sid,
                            ParticleStateRow.iteration == t,
                            ParticleStateRow.evaluated.is_(None),
                        )
                    )
                ]
            for p in todo:
                run_evaluation(rt, sid, t, p, worker=f"worker-{p % 8}")
            coordinate_iteration(rt, sid, t)
            if t % 100 == 0:
                print(f"  built iteration {t} ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        os.fsync = sync
    return db, sid


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--particles", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--params", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        db, sid = build(root, args.particles, args.iterations, args.params)
        print(f"recorded search {sid} in {time.perf_counter() - t0:.0f} s")
        store = LocalArtifactStore(root / "art")
        with db.session() as s:
            hashes = {
                h
                for row in s.execute(
                    select(
                        ParticleStateRow.position_hash,
                        ParticleStateRow.velocity_hash,
                        ParticleStateRow.best_hash,
                    ).where(ParticleStateRow.search_id == sid)
                )
                for h in row
                if h is not None
            }
            states = s.query(ParticleStateRow).filter_by(search_id=sid).count()
        nbytes = sum((store.root / h[:2] / f"{h}.safetensors").stat().st_size for h in hashes)

        def plain() -> int:
            return sum(store.get_vector(h).size for h in hashes)

        def plain_threads() -> int:
            # The same reads on two threads, as the audit reads ahead on two threads.
            with ThreadPoolExecutor(max_workers=2) as pool:
                return sum(v.size for v in pool.map(store.get_vector, sorted(hashes)))

        def audit() -> Any:
            result = audit_search(db, store, sid)
            assert result.ok, result.mismatches[0]
            return result

        def report() -> Any:
            return write_report(db, sid, root / "report")

        def history() -> int:
            with open(root / "history.csv", "w", encoding="utf-8", newline="") as f:
                return write_csv(history_rows(db, sid), f)

        plain()  # warm the page cache once
        t_plain, _ = timed(plain, args.repeat)
        t_plain2, _ = timed(plain_threads, args.repeat)
        t_audit, result = timed(audit, args.repeat)
        t_report, rep = timed(report, args.repeat)
        t_history, rows = timed(history, args.repeat)

    print(
        f"{args.iterations} iterations x {args.particles} particles = {states} particle states, "
        f"{args.params} float32 parameters per position; {len(hashes)} distinct artifacts "
        f"({nbytes / 2**20:.1f} MiB); median of {args.repeat}, warm page cache"
    )
    print(
        f"{'report (load record + 6 PNG figures + page)':<46} {t_report:8.2f} s"
        f"   (load {rep.load_seconds:.2f} s, figures {rep.plot_seconds:.2f} s)"
    )
    print(f"{'history export (CSV, every field)':<46} {t_history:8.2f} s   ({rows} rows)")
    print(f"{'plain read of every artifact (verified)':<46} {t_plain:8.2f} s   1.00x")
    print(f"{'plain read, two threads':<46} {t_plain2:8.2f} s {t_plain2 / t_plain:6.2f}x")
    print(
        f"{'audit (recompute every update, check all)':<46} {t_audit:8.2f} s "
        f"{t_audit / t_plain:6.2f}x   ({result.updates} updates, "
        f"{result.artifacts_read} artifacts read)"
    )


if __name__ == "__main__":
    main()
