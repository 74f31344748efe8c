"""A seeded chaos soak: a search during which workers and the coordinator are killed at random,
at least 20 times, ends with the result of the same search run without any fault.

The kills, drawn from a seeded generator: an evaluation's pool process (an OOM kill), a whole
evaluation worker with its pool (a lost machine, started again), the whole coordinator
(started again), a coordinator right after it committed an iteration and before it sent
anything, and an evaluation worker right after it recorded a result and before it sent the
coordination (the last two through the fault points of tests/fault_hooks.py). The cluster runs
on a Redis and a PostgreSQL of its own; the attempt cap is raised so that chance, hitting one
evaluation several times, never exhausts it (the cap has its own tests).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusters import (
    Cluster,
    PrivatePostgres,
    PrivateRedis,
    children,
    closed_form,
    cluster_client,
    embedded_reference,
    evaluations,
    make_pool,
    running_cluster,
    same_result,
    wait_finished,
    worker_env,
)
from fault_hooks import FAULTS_ENV, arm, fired

from swarmq.engine import search_summary
from swarmq.execution import DistributedClient

pytestmark = [pytest.mark.slow]

SEED = 20241029
MIN_KILLS = 20
EVALUATION_WORKERS = ("eval-a", "eval-b")


@pytest.fixture(scope="module")
def chaos_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    redis_server = PrivateRedis().start()
    pg_server = PrivatePostgres().start()
    root = tmp_path_factory.mktemp("chaos")
    try:
        yield worker_env(
            root,
            database=pg_server.create_database("swarmq"),
            broker=redis_server.url,
            evaluate="fault_hooks:evaluate",
            extra={
                "SWARMQ_MAX_ATTEMPTS": "100",
                "SWARMQ_FAULT_HOOK": "fault_hooks:fault",
                FAULTS_ENV: str(root / "faults"),
            },
        )
    finally:
        redis_server.stop()
        pg_server.destroy()


@pytest.fixture(scope="module")
def chaos_cluster(chaos_env: dict[str, str]) -> Iterator[Cluster]:
    with running_cluster(chaos_env, EVALUATION_WORKERS) as c:
        yield c


def _pid(worker: str | None) -> int:
    return int(str(worker).rsplit(":", 1)[1])


def _alive(pid: int) -> bool:
    """Running, not a zombie that its parent has yet to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Chaos:
    """Draws and performs the kills; keeps a journal to print when the test fails."""

    def __init__(self, cluster: Cluster, client: DistributedClient, sid: str, faults: Path):
        self.cluster, self.client, self.sid, self.faults = cluster, client, sid, faults
        self.rng = random.Random(SEED)
        self.journal: list[str] = []
        self.direct = 0  # kills done from here (the fault points count their own)
        self.reruns = 0  # kills that can cost an evaluation a second attempt
        self.down: dict[str, float] = {}  # killed workers, restarted after a pause

    @property
    def kills(self) -> int:
        return (
            self.direct
            + len(fired(self.faults, "coordinate.committed"))
            + len(fired(self.faults, "evaluate.recorded"))
        )

    def note(self, what: str) -> None:
        self.journal.append(f"{time.monotonic():.2f} {what}")

    def step(self) -> None:
        """Restart what is due, then do one random thing."""
        for name, due in list(self.down.items()):
            if time.monotonic() >= due:
                del self.down[name]
                self.cluster.restart(name, ready=False)
                self.note(f"restart {name}")
        action = self.rng.choice(
            ["evaluation", "evaluation", "evaluation", "worker", "coordinator", "commit", "record"]
        )
        iteration = search_summary(self.client.runtime.db, self.sid).iteration
        if action == "evaluation":
            ours = {
                pid
                for proc in self.cluster.procs.values()
                for pid in (proc.pid, *children(proc.pid))
                if _alive(pid)
            }
            # A row still names a process killed a moment ago until its message comes back.
            running = [
                e
                for e in evaluations(self.client.runtime.db, self.sid)
                if e.status == "running" and _pid(e.worker) in ours
            ]
            if running:
                victim = self.rng.choice(running)
                os.kill(_pid(victim.worker), signal.SIGKILL)
                self.direct += 1
                self.reruns += 1
                self.note(
                    f"SIGKILL evaluation {victim.iteration}/{victim.particle} ({victim.worker})"
                )
        elif action in ("worker", "coordinator"):
            names = EVALUATION_WORKERS if action == "worker" else ("coordinator",)
            alive = [n for n in names if n not in self.down]
            # Keep one evaluation worker up: a cluster with none only waits.
            if alive and (action == "coordinator" or len(alive) == len(names)):
                name = self.rng.choice(alive)
                self.cluster.kill(name)
                self.down[name] = time.monotonic() + self.rng.uniform(0.5, 2.0)
                self.direct += 1
                self.reruns += action == "worker"
                self.note(f"kill the whole {name}")
        elif action == "commit":
            arm(self.faults, "coordinate.committed", search_id=self.sid, iteration=iteration)
            self.note(f"arm coordinate.committed at iteration {iteration}")
        else:
            particle = self.rng.randrange(8)
            arm(
                self.faults,
                "evaluate.recorded",
                search_id=self.sid,
                iteration=iteration,
                particle=particle,
            )
            self.note(f"arm evaluate.recorded at {iteration}/{particle}")

    def heal(self) -> None:
        for point in ("coordinate.committed", "evaluate.recorded"):
            (self.faults / f"{point}.json").unlink(missing_ok=True)
        for name in list(self.down):
            del self.down[name]
            self.cluster.restart(name, ready=False)
            self.note(f"restart {name}")


def test_random_kills_do_not_change_the_result(
    chaos_env: dict[str, str], chaos_cluster: Cluster, tmp_path: Path
) -> None:
    client = cluster_client(chaos_env)
    cfg = closed_form(
        make_pool(tmp_path / "pool", 4),
        "chaos",
        hook="slow",
        sleep=0.15,
        particles=8,
        max_iterations=14,
        swarm={"patience": 30},
    )
    ref_db, ref = embedded_reference(tmp_path, cfg)
    faults = Path(chaos_env[FAULTS_ENV])
    faults.mkdir(exist_ok=True)
    db = client.runtime.db
    sid = client.submit(cfg, check_objective=False)
    chaos = Chaos(chaos_cluster, client, sid, faults)
    deadline = time.monotonic() + 120  # the soak is bounded, whatever happens
    while time.monotonic() < deadline and chaos.kills < MIN_KILLS:
        if search_summary(db, sid).status != "running":
            break
        chaos.step()
        time.sleep(chaos.rng.uniform(0.2, 0.8))
    chaos.heal()
    journal = "\n".join(chaos.journal)
    assert chaos.kills >= MIN_KILLS, f"the search ended after {chaos.kills} kills:\n{journal}"

    assert wait_finished(db, sid, chaos_cluster, timeout=120) == "completed", journal
    evs = evaluations(db, sid)
    keys = [(e.iteration, e.particle, e.split) for e in evs]
    assert keys == [(e.iteration, e.particle, e.split) for e in evaluations(ref_db, ref)]
    assert all(e.status == "done" for e in evs), journal
    # Only a kill can cost an evaluation a second attempt; a result is never recorded twice.
    extra = sum(e.attempts - 1 for e in evs)
    assert extra <= chaos.reruns, f"{extra} extra attempts for {chaos.reruns} kills\n{journal}"
    same_result(db, sid, ref_db, ref)
