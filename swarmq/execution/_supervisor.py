"""``swarmq worker``: start and watch the Celery worker processes of one machine.

One worker process per GPU (each sees only its GPU through ``CUDA_VISIBLE_DEVICES``, so a
model never lands on a neighbour's card), or one CPU worker; with ``--coordinator`` a worker of
the coordinator queue that also runs the reconciler's schedule. The first SIGTERM or SIGINT
asks every worker for a warm shutdown (finish the running evaluation, take no new one), a
second one for a cold shutdown; a worker that exits on its own stops the others, so that the
process manager (systemd, Docker) restarts the machine's workers as a whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from swarmq.errors import ConfigError
from swarmq.execution._app import COORDINATOR_QUEUE, EVALUATE_QUEUE
from swarmq.settings import Settings

__all__ = ["WorkerSpec", "celery_command", "parse_gpus", "supervise", "worker_specs"]


@dataclass(frozen=True)
class WorkerSpec:
    """One Celery worker process to run."""

    name: str  # gpu0, cpu, coordinator
    queue: str
    concurrency: int
    env: dict[str, str] = field(default_factory=dict)
    beat: bool = False  # run the periodic reconciler


def parse_gpus(text: str) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]``; GPU indices or UUIDs, no duplicates."""
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise ConfigError(f"--gpus {text!r} names no GPU; example: --gpus 0,1")
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus {text!r} names a GPU twice")
    return gpus


def worker_specs(
    *, gpus: list[str] | None, coordinator: bool, concurrency: int | None
) -> list[WorkerSpec]:
    """The worker processes for the options of ``swarmq worker``.

    Evaluation workers are started unless ``--coordinator`` is given alone.
    """
    specs: list[WorkerSpec] = []
    if coordinator:
        specs.append(
            WorkerSpec(
                "coordinator",
                COORDINATOR_QUEUE,
                1,
                {"SWARMQ_WORKER_ROLE": "coordinator"},
                beat=True,
            )
        )
    if gpus:
        for gpu in gpus:
            # One process per GPU, one evaluation at a time on it: a second model on the same
            # card would only compete for its memory.
            specs.append(
                WorkerSpec(
                    f"gpu{gpu}",
                    EVALUATE_QUEUE,
                    concurrency or 1,
                    {"CUDA_VISIBLE_DEVICES": gpu, "SWARMQ_WORKER_ROLE": "evaluate"},
                )
            )
    elif not coordinator or concurrency:
        specs.append(
            WorkerSpec("cpu", EVALUATE_QUEUE, concurrency or 1, {"SWARMQ_WORKER_ROLE": "evaluate"})
        )
    return specs


def celery_command(spec: WorkerSpec, *, loglevel: str, state_dir: Path) -> list[str]:
    """The ``celery worker`` command line of one spec."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "swarmq.execution.worker",
        "worker",
        "--queues",
        spec.queue,
        "--concurrency",
        str(spec.concurrency),
        # prefork: a killed evaluation takes only its pool process down, and the parent puts
        # the message back (task_reject_on_worker_lost).
        "--pool",
        "prefork",
        "--hostname",
        f"{spec.name}-{os.getpid()}@{socket.gethostname()}",
        "--loglevel",
        loglevel,
        # Workers do not talk to each other: start-up synchronisation would only add seconds.
        "--without-mingle",
        "--without-gossip",
    ]
    if spec.beat:
        argv += ["--beat", "--schedule", str(state_dir / "celerybeat-schedule")]
    return argv


def _die_with_parent() -> None:
    # Linux: a worker whose supervisor is killed (SIGKILL) gets SIGTERM instead of living on.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(
    specs: list[WorkerSpec],
    settings: Settings,
    *,
    loglevel: str = "info",
    extra_env: dict[str, str] | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Run the workers until they stop; returns the exit status for the command."""
    base_env = os.environ | settings.to_env() | (extra_env or {})
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    state_dir = Path(tempfile.mkdtemp(prefix="swarmq-worker-"))
    children: list[tuple[WorkerSpec, subprocess.Popen[bytes]]] = []
    stopping = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping += 1
        sig = signal.SIGTERM if stopping == 1 else signal.SIGQUIT
        what = "warm (finishing running tasks)" if stopping == 1 else "cold"
        echo(f"swarmq worker: {signal.Signals(signum).name}: {what} shutdown of the workers")
        for _spec, proc in children:
            if proc.poll() is None:
                proc.send_signal(sig)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for spec in specs:
            argv = celery_command(spec, loglevel=loglevel, state_dir=state_dir)
            proc = subprocess.Popen(
                argv,
                env=base_env | spec.env,
                # Own process group: a terminal's Ctrl-C reaches only the supervisor, which
                # forwards one signal per worker (two would turn a warm shutdown cold).
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the supervisor has no threads
            )
            children.append((spec, proc))
            echo(
                f"swarmq worker: started {spec.name} (pid {proc.pid}) on queue {spec.queue}, "
                f"concurrency {spec.concurrency}{', with the reconciler' if spec.beat else ''}"
            )
        while any(proc.poll() is None for _spec, proc in children):
            for spec, proc in children:
                code = proc.poll()
                if code is not None and not stopping:
                    echo(
                        f"swarmq worker: {spec.name} exited with status {code}; "
                        "stopping the other workers"
                    )
                    status = code or 1
                    on_signal(signal.SIGTERM, None)
            time.sleep(0.2)
        if not status:
            status = max((abs(proc.returncode or 0) for _spec, proc in children), default=0)
            status = 0 if stopping else status
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for _spec, proc in children:
            if proc.poll() is None:
                proc.kill()
    return status
