"""Benchmark: the distributed mode on real servers (Redis as the broker, PostgreSQL as the record).

Real ``swarmq worker`` processes (a coordinator and an evaluation worker) run searches whose
model evaluation is replaced by :func:`evaluate` below (``SWARMQ_EVALUATE``), so what is
measured is swarmq's own machinery. Three measurements, in one run:

(a) bookkeeping throughput: evaluations per second, end to end (submit to the last final
    evaluation: claims, results, heartbeats, coordinations, artifact writes, broker messages),
    with an evaluation that does no work; side by side with optuna's RDBStorage on the same
    PostgreSQL server (trials per second, a no-op objective, as many processes as swarmq has
    evaluation processes), the two systems alternated ``--throughput-repeats`` times;
(b) scheduling efficiency with uneven evaluation times: each evaluation sleeps a duration drawn
    from a log-normal distribution seeded by its position; the wall time is set against the
    ideal (total work / workers), against the ideal of a search whose iterations are barriers
    (each iteration needs all its evaluations), and against a simulation of those barriers
    with the evaluations taken in particle order, and in the order they were sent, with no
    overhead at all; run once with durations independent of the particle and once with
    durations that follow the position (a particle keeps much of its duration from one
    iteration to the next, which the longest-expected-first dispatch uses);
(c) coordinator restart: the coordinator is killed while an iteration's evaluations run; once
    they are done a new coordinator is started, and the time from its start to the next
    iteration's first evaluation is measured; with the coordination message waiting in the
    broker, and with it lost (the coordinator queue deleted: what a coordinator killed in the
    middle of a coordination, or a Redis without persistence, leaves).

Run (PostgreSQL and Redis on 127.0.0.1; optuna from the ``bench`` extra)::

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/bench_distributed.py --redis redis://127.0.0.1:6379/11

It creates and drops its own PostgreSQL databases (``swarmq_bench_*``, ``optuna_bench_*``).
The Redis database is the one given by ``--redis``: it must be empty (the run refuses one that
holds keys, which may be another program's), and the run empties it again when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
HOOK = "bench_distributed:evaluate"
COORDINATOR_QUEUE = "swarmq.coordinator"


# --- the evaluation hook: runs in the worker processes --------------------------------------------


def evaluate(
    config: Any, adapter: Any, layout: Any, vector: np.ndarray, split: str
) -> tuple[float, dict[str, Any]]:
    """The model's stand-in; ``objective.options["hook"]`` of the search says what it costs.

    ``noop``: nothing (a utility from the vector, microseconds); ``sleep``: ``seconds``;
    ``uneven``: a duration seeded by the position (see :func:`uneven_duration`), reported in
    the evaluation's metrics so that the benchmark knows the total work.
    """
    options = config.objective.options
    utility = -float(np.sum(np.square(vector, dtype=np.float64)))
    hook = options.get("hook", "noop")
    if hook == "sleep":
        time.sleep(float(options["seconds"]))
    elif hook == "uneven":
        slept = uneven_duration(vector, options)
        time.sleep(slept)
        return utility, {"slept": slept}
    return utility, {}


def uneven_duration(vector: np.ndarray, options: dict[str, Any]) -> float:
    """A log-normal duration, clipped, seeded by the position and the options' seed.

    Seeded by the position rather than by a counter: an evaluation sent twice takes as long
    both times, and a run is reproduced by the search's own seed.
    """
    digest = hashlib.sha256(vector.tobytes()).digest()
    rng = np.random.default_rng([int.from_bytes(digest[:8], "little"), int(options["seed"])])
    z = rng.standard_normal()
    rho = float(options.get("correlation", 0.0))
    if rho:
        # A model's evaluation time follows its weights (how long its answers are): mostly a
        # smooth function of the position, here its projection on a fixed direction, so that
        # a particle, which moves a little per iteration, keeps much of its duration.
        direction = np.random.default_rng(int(options["seed"])).standard_normal(vector.size)
        smooth = float(np.dot(direction, vector) / np.linalg.norm(direction))
        z = rho * smooth + np.sqrt(1.0 - rho * rho) * z
    value = float(options["median"]) * np.exp(float(options["sigma"]) * z)
    return float(np.clip(value, float(options["min"]), float(options["max"])))


# --- processes ------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, from /proc (``swarmq worker`` starts its Celery workers in
    their own sessions, so a process group would not reach them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Cluster:
    """``swarmq worker`` processes sharing one environment; a log file per start in ``logs``."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_files: dict[str, Path] = {}
        self.starts = 0

    def start(self, name: str, *args: str) -> None:
        self.starts += 1
        log = self.logs / f"{name}-{self.starts}.log"
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "swarmq", "worker", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.log_files[name] = log

    def wait_ready(self, name: str, timeout: float = 180.0) -> float:
        """Wait for every Celery worker of ``name`` to say it is ready; returns the moment
        (``time.perf_counter``) the last one did."""
        log, proc = self.log_files[name], self.procs[name]
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            text = log.read_text(errors="replace")
            started = text.count("swarmq worker: started")
            if started and text.count(" ready.") >= started:
                return time.perf_counter()
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"worker {name} did not start:\n{log.read_text(errors='replace')}")

    def kill(self, name: str) -> None:
        """SIGKILL a ``swarmq worker`` and every process under it: a machine that dies."""
        proc = self.procs.pop(name)
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """A warm shutdown (SIGTERM), then SIGKILL for what is left."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        self.kill(name)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


# --- servers and searches -------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``admin_url``, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_pool(root: Path, n: int) -> Path:
    """``n`` small random experts (two tensors, 18 float32 parameters)."""
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        tensors = {
            "a.weight": rng.normal(size=(6,)).astype(np.float32),
            "b.weight": rng.normal(size=(3, 4)).astype(np.float32),
        }
        save_file(tensors, str(root / f"e{k}.safetensors"))
    return root


def search_config(
    pool: Path,
    name: str,
    *,
    particles: int,
    iterations: int,
    options: dict[str, Any],
    mode: str = "synchronous",
) -> Any:
    from swarmq.config import parse_config

    return parse_config(
        {
            "search": {
                "name": name,
                "seed": 7,
                "particles": particles,
                "max_iterations": iterations,
            },
            "experts": {"path": str(pool)},
            "base_model": {"path": "unused"},
            "objective": {
                "utility": "exact_match",
                "dataset": str(pool / "unused.json"),
                "options": options,
            },
            # Patience above the budget: every search runs all its iterations.
            "swarm": {"patience": iterations + 1, "mode": mode},
        }
    )


def evaluation_rows(db: Any, search_id: str) -> list[Any]:
    from sqlalchemy import select

    from swarmq.storage import EvaluationRow

    with db.session() as s:
        return list(s.scalars(select(EvaluationRow).where(EvaluationRow.search_id == search_id)))


def wait_finished(db: Any, search_id: str, timeout: float) -> None:
    """Until the search stopped and its final evaluations ran."""
    from swarmq.engine import search_summary

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        status = search_summary(db, search_id).status
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"search {search_id} {status}")
        if status == "completed" and not any(
            e.status in ("pending", "running") for e in evaluation_rows(db, search_id)
        ):
            return
        time.sleep(0.02)
    raise RuntimeError(f"search {search_id} did not finish in {timeout:.0f}s")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --- (a) throughput -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    evaluations: int
    coordinations: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.evaluations / self.seconds


def swarmq_throughput(client: Any, pool: Path, particles: int, iterations: int) -> Throughput:
    cfg = search_config(
        pool, "throughput", particles=particles, iterations=iterations, options={"hook": "noop"}
    )
    t0 = time.perf_counter()
    sid = client.submit(cfg, check_objective=False)
    wait_finished(client.runtime.db, sid, timeout=600)
    seconds = time.perf_counter() - t0
    done = [e for e in evaluation_rows(client.runtime.db, sid) if e.status == "done"]
    return Throughput(len(done), iterations, seconds)


def _optuna_process(url: str, study: str, trials: int, barrier: Any) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(
        study_name=study,
        storage=optuna.storages.RDBStorage(url),
        sampler=optuna.samplers.RandomSampler(seed=os.getpid()),
    )
    # One trial outside the measurement: connections and the storage's caches are warm, as
    # swarmq's workers are after their warm-up search.
    loaded.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=1)
    barrier.wait()
    loaded.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=trials)


def optuna_throughput(url: str, processes: int, trials: int, study: str = "noop") -> Throughput:
    """Trials per second of ``processes`` processes sharing one study in optuna's RDBStorage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=study, storage=optuna.storages.RDBStorage(url))
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    per_process = trials // processes
    procs = [
        ctx.Process(target=_optuna_process, args=(url, study, per_process, barrier))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t0
    if any(p.exitcode for p in procs):
        raise RuntimeError("an optuna process failed")
    return Throughput(per_process * processes, 0, seconds)


# --- (b) scheduling efficiency --------------------------------------------------------------------


@dataclass(frozen=True)
class Efficiency:
    evaluations: int
    work: float  # seconds of evaluation, summed
    wall: float
    workers: int
    barrier_bound: float  # the best a search with iteration barriers can do
    fifo: float  # the same barriers, evaluations taken in particle order by the first free worker
    sent: float  # the same, in the order the evaluations were claimed (the order sent)
    # Per iteration boundary, medians: last result recorded -> next iteration committed by the
    # coordinator -> its first evaluation claimed by a worker.
    to_applied: float
    to_started: float

    @property
    def ideal(self) -> float:
        return self.work / self.workers


def scheduling_efficiency(
    client: Any,
    pool: Path,
    workers: int,
    particles: int,
    iterations: int,
    correlation: float = 0.0,
) -> Efficiency:
    options: dict[str, Any] = {
        "hook": "uneven",
        "seed": 3,
        "median": 0.25,
        "sigma": 0.8,
        "min": 0.02,
        "max": 2.0,
    }
    if correlation:
        options["correlation"] = correlation
    cfg = search_config(pool, "uneven", particles=particles, iterations=iterations, options=options)
    t0 = time.perf_counter()
    sid = client.submit(cfg, check_objective=False)
    wait_finished(client.runtime.db, sid, timeout=900)
    wall = time.perf_counter() - t0
    done = [e for e in evaluation_rows(client.runtime.db, sid) if e.status == "done" and e.metrics]
    # Iterations are barriers (an iteration's update needs all its evaluations), and the final
    # test evaluations wait for the last iteration: per such phase no schedule beats the larger
    # of (its work / workers) and its longest evaluation.
    phases: dict[tuple[str, int], list[tuple[int, float]]] = {}
    claimed: dict[tuple[str, int], list[tuple[Any, float]]] = {}
    for e in done:
        phase = ("dev", e.iteration) if e.split == "dev" else ("test", 0)
        phases.setdefault(phase, []).append((e.particle, float(e.metrics["slept"])))
        claimed.setdefault(phase, []).append((e.started_at, float(e.metrics["slept"])))
    sent = sum(
        _fifo_makespan([d for _t, d in sorted(c, key=lambda x: x[0])], workers)
        for c in claimed.values()
    )
    durations = [[d for _p, d in sorted(phase)] for phase in phases.values()]
    bound = sum(max(sum(d) / workers, max(d)) for d in durations)
    work = sum(sum(d) for d in durations)
    fifo = sum(_fifo_makespan(d, workers) for d in durations)
    applied, started = _transitions(client.runtime.db, sid, done)
    return Efficiency(len(done), work, wall, workers, bound, fifo, sent, applied, started)


def _transitions(db: Any, search_id: str, done: list[Any]) -> tuple[float, float]:
    """Medians over iteration boundaries: last result -> next iteration committed -> claimed."""
    from sqlalchemy import select

    from swarmq.storage import IterationRow

    with db.session() as s:
        its = {
            it.number: it
            for it in s.scalars(select(IterationRow).where(IterationRow.search_id == search_id))
        }
    dev = [e for e in done if e.split == "dev"]
    to_applied, to_started = [], []
    for k in sorted(its):
        now, nxt = [e for e in dev if e.iteration == k], [e for e in dev if e.iteration == k + 1]
        if not now or not nxt or its[k].applied_at is None:
            continue
        last = max(e.finished_at for e in now)
        to_applied.append((its[k].applied_at - last).total_seconds())
        to_started.append((min(e.started_at for e in nxt) - its[k].applied_at).total_seconds())
    return statistics.median(to_applied), statistics.median(to_started)


def _fifo_makespan(durations: list[float], workers: int) -> float:
    """The finish time of jobs taken in order, each by the first worker to be free."""
    free = [0.0] * workers
    for d in durations:
        free[free.index(min(free))] += d
    return max(free)


@dataclass(frozen=True)
class AsyncEfficiency:
    evaluations: int
    work: float  # seconds of evaluation, summed
    wall: float
    workers: int
    fifo: float  # the same evaluations, each particle's in its order, no overhead at all
    gap: float  # median time a worker spends between two evaluations (claim, record, apply)

    @property
    def ideal(self) -> float:
        return self.work / self.workers


def asynchronous_efficiency(
    client: Any, pool: Path, workers: int, particles: int, iterations: int
) -> AsyncEfficiency:
    """(b) for ``[swarm] mode = "asynchronous"``: no barrier, so the bound is work / workers;
    beside it, a zero-overhead simulation of the same queue (each particle's next evaluation
    queued when its previous one finishes, taken by the first free worker)."""
    options: dict[str, Any] = {
        "hook": "uneven",
        "seed": 3,
        "median": 0.25,
        "sigma": 0.8,
        "min": 0.02,
        "max": 2.0,
    }
    cfg = search_config(
        pool,
        "uneven-async",
        particles=particles,
        iterations=iterations,
        options=options,
        mode="asynchronous",
    )
    t0 = time.perf_counter()
    sid = client.submit(cfg, check_objective=False)
    wait_finished(client.runtime.db, sid, timeout=1800)
    wall = time.perf_counter() - t0
    done = [e for e in evaluation_rows(client.runtime.db, sid) if e.status == "done" and e.metrics]
    work = sum(float(e.metrics["slept"]) for e in done)
    chains: dict[int, list[float]] = {}
    for e in sorted((e for e in done if e.split == "dev"), key=lambda e: e.iteration):
        chains.setdefault(e.particle, []).append(float(e.metrics["slept"]))
    tests = [float(e.metrics["slept"]) for e in done if e.split == "test"]
    fifo = _chains_makespan(chains, workers) + _fifo_makespan(tests, workers)
    gaps: list[float] = []
    by_worker: dict[str, list[Any]] = {}
    for e in done:
        by_worker.setdefault(str(e.worker), []).append(e)
    for rows in by_worker.values():
        rows.sort(key=lambda e: e.started_at)
        gaps += [
            (b.started_at - a.finished_at).total_seconds() for a, b in itertools.pairwise(rows)
        ]
    return AsyncEfficiency(len(done), work, wall, workers, fifo, statistics.median(gaps))


def _chains_makespan(chains: dict[int, list[float]], workers: int) -> float:
    """Particles' evaluations in order, each queued when the particle's previous one ends and
    taken by the first free worker, with no overhead: the asynchronous queue, simulated."""
    import heapq

    queue = [(0.0, p, 0) for p in sorted(chains)]  # (ready at, particle, index in its chain)
    heapq.heapify(queue)
    free = [0.0] * workers
    end = 0.0
    while queue:
        ready, p, k = heapq.heappop(queue)
        w = free.index(min(free))
        start = max(ready, free[w])
        free[w] = start + chains[p][k]
        end = max(end, free[w])
        if k + 1 < len(chains[p]):
            heapq.heappush(queue, (free[w], p, k + 1))
    return end


# --- (c) coordinator restart ----------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    variant: str  # "queued" | "lost"
    to_ready: float  # start of the new coordinator -> its Celery worker ready
    to_applied: float  # -> the next iteration's evaluations recorded (the coordination done)
    to_started: float  # -> the first of them running on a worker


def coordinator_restarts(
    cluster: Cluster, client: Any, pool: Path, broker_url: str, repeats: int
) -> list[Restart]:
    import redis

    db = client.runtime.db
    particles = 4
    variants = ["queued", "lost"] * repeats
    cfg = search_config(
        pool,
        "restart",
        particles=particles,
        iterations=len(variants) + 1,
        # Long enough for the kill to land while they run.
        options={"hook": "sleep", "seconds": 2.0},
    )
    sid = client.submit(cfg, check_objective=False)
    broker = redis.Redis.from_url(broker_url)

    def rows(iteration: int) -> list[Any]:
        return [
            e for e in evaluation_rows(db, sid) if e.iteration == iteration and e.split == "dev"
        ]

    def all_running(k: int) -> bool:
        return sum(e.status in ("running", "done") for e in rows(k)) == particles

    def all_done(k: int) -> bool:
        return all(e.status == "done" for e in rows(k))

    def one_started(k: int) -> bool:
        return any(e.started_at is not None for e in rows(k))

    out: list[Restart] = []
    for k, variant in enumerate(variants):
        wait_for(f"iteration {k} running", partial(all_running, k))
        cluster.kill("coordinator")
        wait_for(f"iteration {k} done", partial(all_done, k))
        # The last evaluation sends the coordination just after its commit.
        wait_for("the coordination message", lambda: broker.llen(COORDINATOR_QUEUE) > 0, 10)
        if variant == "lost":
            broker.delete(COORDINATOR_QUEUE)
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        cluster.start("coordinator", "--coordinator")
        ready = cluster.wait_ready("coordinator") - t0
        wait_for(f"iteration {k + 1} started", partial(one_started, k + 1))
        nxt = rows(k + 1)
        applied = min(e.created_at for e in nxt)
        first = min(e.started_at for e in nxt if e.started_at is not None)
        out.append(
            Restart(
                variant,
                ready,
                (applied - started_at).total_seconds(),
                (first - started_at).total_seconds(),
            )
        )
    wait_finished(db, sid, timeout=300)
    return out


# --- the run --------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


POOL_SIZE = 4  # experts in the benchmark's pool; a search has at least as many particles


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: at least {low}")
        return value

    return parse


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="an admin URL of the PostgreSQL server (databases are created and dropped on it)",
    )
    ap.add_argument(
        "--redis",
        required=True,
        help="an empty Redis database for the run, e.g. redis://127.0.0.1:6379/11 (refused if "
        "it holds keys; emptied again at the end)",
    )
    ap.add_argument("--workers", type=_at_least(1), default=2, help="evaluation processes for (a)")
    ap.add_argument("--particles", type=_at_least(POOL_SIZE), default=20, help="(a): particles")
    ap.add_argument("--iterations", type=int, default=30, help="(a): iterations")
    ap.add_argument("--uneven-workers", type=int, default=4, help="(b): evaluation processes")
    ap.add_argument("--repeats", type=int, default=3, help="(c): restarts of each variant")
    ap.add_argument(
        "--throughput-repeats",
        type=int,
        default=3,
        help="(a): runs of each system, alternated (swarmq, optuna, swarmq, ...)",
    )
    ap.add_argument("--only", choices=("a", "b", "c"), action="append", help="run only these parts")
    ap.add_argument(
        "--swarm-mode",
        choices=("synchronous", "asynchronous", "both"),
        default="synchronous",
        help="(b): the [swarm] mode of the uneven searches",
    )
    ap.add_argument(
        "--uneven-iterations",
        type=int,
        action="append",
        help="(b), asynchronous: max_iterations of a run (repeat for several; default 6)",
    )
    args = ap.parse_args()
    parts = set(args.only or ("a", "b", "c"))

    import redis

    from swarmq.execution import DistributedClient
    from swarmq.settings import load_settings
    from swarmq.storage import Database, redact_url

    broker = redis.Redis.from_url(args.redis)
    keys = broker.dbsize()
    if keys:
        ap.error(
            f"--redis {redact_url(args.redis)} holds {keys} key(s): give an empty database "
            "(the run would mix its messages with them and empty it at the end)"
        )
    with (
        tempfile.TemporaryDirectory(prefix="swarmq-bench-") as tmp,
        fresh_database(args.postgres, "swarmq_bench") as swarmq_url,
        fresh_database(args.postgres, "optuna_bench") as optuna_url,
    ):
        root = Path(tmp)
        db = Database(swarmq_url)
        db.upgrade()
        db.engine.dispose()
        pool = make_pool(root / "pool", POOL_SIZE)
        base = {k: v for k, v in os.environ.items() if not k.startswith("SWARMQ_")}
        env = base | {
            "SWARMQ_DATABASE_URL": swarmq_url,
            "SWARMQ_BROKER_URL": args.redis,
            "SWARMQ_ARTIFACTS": str(root / "artifacts"),
            "SWARMQ_EVALUATE": HOOK,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), base.get("PYTHONPATH")])),
        }
        client = DistributedClient(
            load_settings(environ={k: v for k, v in env.items() if k.startswith("SWARMQ_")})
        )
        cluster = Cluster(env, root)
        try:
            cluster.start("coordinator", "--coordinator")
            cluster.start("evaluate", "--concurrency", str(args.workers))
            cluster.wait_ready("coordinator")
            cluster.wait_ready("evaluate")
            # Warm-up: every pool process has opened its connections and read the pool.
            # (At least one particle per expert: a search refuses fewer.)
            swarmq_throughput(
                client, pool, particles=max(2 * args.workers, POOL_SIZE), iterations=2
            )
            ours: list[Throughput] = []
            theirs: list[Throughput] = []
            for k in range(args.throughput_repeats if "a" in parts else 0):
                # Alternated, so that both systems see the same load of the shared machine.
                ours.append(swarmq_throughput(client, pool, args.particles, args.iterations))
                theirs.append(
                    optuna_throughput(optuna_url, args.workers, ours[-1].evaluations, f"noop{k}")
                )

            if parts & {"b", "c"}:
                cluster.stop("evaluate")
                cluster.start("evaluate", "--concurrency", str(args.uneven_workers))
                cluster.wait_ready("evaluate")
            asynchronous: list[tuple[int, AsyncEfficiency]] = []
            if "b" in parts and args.swarm_mode in ("asynchronous", "both"):
                for its in args.uneven_iterations or [6]:
                    asynchronous.append(
                        (
                            its,
                            asynchronous_efficiency(
                                client, pool, args.uneven_workers, particles=12, iterations=its
                            ),
                        )
                    )
            if "b" in parts and args.swarm_mode in ("synchronous", "both"):
                uneven = scheduling_efficiency(
                    client, pool, args.uneven_workers, particles=12, iterations=6
                )
                smooth = scheduling_efficiency(
                    client, pool, args.uneven_workers, particles=12, iterations=6, correlation=0.8
                )
            if "c" in parts:
                restarts = coordinator_restarts(cluster, client, pool, args.redis, args.repeats)
        finally:
            cluster.stop_all()
            client.runtime.db.engine.dispose()
            broker.flushdb()

    if "a" in parts and ours:  # (--throughput-repeats 0: the warm-up alone)
        print(
            f"(a) no-op evaluations, {args.workers} evaluation processes, PostgreSQL + Redis, "
            f"{args.throughput_repeats} runs of each, alternated"
        )
        print("| system | work | each run: time (per second) | median per second | ratio |")
        print("| --- | --- | --- | --- | --- |")
        ours_median = _median([t.per_second for t in ours])
        theirs_median = _median([t.per_second for t in theirs])
        print(
            f"| swarmq (submit to last final evaluation) | {ours[0].evaluations} evaluations, "
            f"{ours[0].coordinations} coordinations | "
            + ", ".join(f"{t.seconds:.2f} s ({t.per_second:.0f})" for t in ours)
            + f" | {ours_median:.0f} | {ours_median / theirs_median:.2f}x |"
        )
        print(
            f"| optuna RDBStorage, RandomSampler | {theirs[0].evaluations} trials | "
            + ", ".join(f"{t.seconds:.2f} s ({t.per_second:.0f})" for t in theirs)
            + f" | {theirs_median:.0f} | 1.00x |"
        )
        print(
            "run by run: "
            + ", ".join(
                f"{a.per_second / b.per_second:.2f}x" for a, b in zip(ours, theirs, strict=True)
            )
        )
        print()
    if "b" not in parts or args.swarm_mode == "asynchronous":
        uneven_runs = []
    else:
        uneven_runs = [("independent of the particle", uneven), ("correlation 0.8", smooth)]
    for name, eff in uneven_runs:
        print(
            f"(b) uneven evaluations, durations {name}: {eff.evaluations}, log-normal "
            f"(median 0.25 s, sigma 0.8, clipped to 0.02-2 s), {eff.workers} evaluation processes"
        )
        print("| measure | seconds | efficiency (bound / wall) |")
        print("| --- | --- | --- |")
        print(f"| total evaluation work | {eff.work:.2f} | |")
        print(f"| ideal: work / workers | {eff.ideal:.2f} | {eff.ideal / eff.wall:.0%} |")
        print(
            f"| ideal with iteration barriers | {eff.barrier_bound:.2f} | "
            f"{eff.barrier_bound / eff.wall:.0%} |"
        )
        print(
            f"| the same, in particle order (no overhead) | {eff.fifo:.2f} | "
            f"{eff.fifo / eff.wall:.0%} |"
        )
        print(
            f"| the same, in the order sent (no overhead) | {eff.sent:.2f} | "
            f"{eff.sent / eff.wall:.0%} |"
        )
        print(f"| wall time, submit to finish | {eff.wall:.2f} | |")
        print(
            f"| per iteration: last result -> coordination applying -> next claimed | "
            f"{eff.to_applied:.3f} + {eff.to_started:.3f} | |"
        )
        print()
    for its, ae in asynchronous:
        print(
            f'(b) uneven evaluations, [swarm] mode = "asynchronous", 12 particles, '
            f"max_iterations = {its}: {ae.evaluations} evaluations, log-normal (median 0.25 s, "
            f"sigma 0.8, clipped to 0.02-2 s), {ae.workers} evaluation processes"
        )
        print("| measure | seconds | efficiency (bound / wall) |")
        print("| --- | --- | --- |")
        print(f"| total evaluation work | {ae.work:.2f} | |")
        print(f"| ideal: work / workers | {ae.ideal:.2f} | {ae.ideal / ae.wall:.0%} |")
        print(
            f"| the same queue simulated with no overhead | {ae.fifo:.2f} | "
            f"{ae.fifo / ae.wall:.0%} |"
        )
        print(f"| wall time, submit to finish | {ae.wall:.2f} | |")
        print(f"| a worker between two evaluations (median) | {ae.gap:.3f} | |")
        print()
    if "c" in parts:
        print(
            f"(c) coordinator restart to the next evaluation, median of {args.repeats} "
            "(seconds from starting the new coordinator)"
        )
        print("| coordination message | ready | next iteration recorded | its first evaluation |")
        print("| --- | --- | --- | --- |")
        for variant in ("queued", "lost"):
            rs = [r for r in restarts if r.variant == variant]
            print(
                f"| {variant} | {_median([r.to_ready for r in rs]):.2f} | "
                f"{_median([r.to_applied for r in rs]):.2f} | "
                f"{_median([r.to_started for r in rs]):.2f} |"
            )


if __name__ == "__main__":
    main()
