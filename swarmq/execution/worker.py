"""The Celery app as worker processes and Flower load it: ``celery -A swarmq.execution.worker``.

Importing this module resolves the settings from the environment (and the settings file),
configures the app with them, and hooks the worker's start-up: each pool process opens its own
database connections and installs its runtime (connections must not cross a fork), and a
coordinator worker runs one reconciler pass each time it connects to the broker: when it
starts, and when it gets the broker back after losing it (a broker restarted without its data
lost every waiting message, which the pass sends again at once). ``swarmq worker`` runs these
processes for you with the right queues.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from celery import bootsteps
from celery.signals import worker_process_init
from celery.worker.control import inspect_command

from swarmq.engine import install_runtime
from swarmq.errors import SwarmqError
from swarmq.execution._app import COORDINATOR_QUEUE, configure_app
from swarmq.execution._context import build_worker_runtime, install_worker_settings
from swarmq.settings import load_settings
from swarmq.storage import Database

__all__ = ["EVALUATE_HOOK_ENV", "ROLE_ENV", "app"]

# module:function replacing the model evaluation (tests and benchmarks only).
EVALUATE_HOOK_ENV = "SWARMQ_EVALUATE"
# "coordinator" for the worker that consumes the coordinator queue.
ROLE_ENV = "SWARMQ_WORKER_ROLE"

log = logging.getLogger("swarmq.worker")

settings = load_settings()
app = configure_app(settings)
install_worker_settings(settings)


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    # The schema check at start-up logs every Alembic plugin at INFO: noise in a worker's log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    install_runtime(build_worker_runtime(settings, os.environ.get(EVALUATE_HOOK_ENV)))


_identity: dict[str, str | None] = {}


@inspect_command(name="swarmq_database")
def _database_identity(state: Any, **_: Any) -> dict[str, str | None]:
    """The identity of this worker's database (``swarmq status`` asks for it)."""
    if "database" not in _identity:
        try:
            _identity["database"] = Database(settings.database_url).identity()
        except SwarmqError as err:
            return {"database": None, "error": str(err)}
    return {"database": _identity["database"]}


class _ReconcileOnConnect(bootsteps.StartStopStep):
    """The coordinator's reconciler pass, without grace, on every connection to the broker.

    Celery restarts its consumer's steps after a lost connection, so this runs at start-up and
    after each reconnection. At start-up, a coordinator killed in the middle of a coordination
    left its message unacknowledged, and waiting for the visibility timeout would stall the
    search; after a reconnection the broker may have restarted without its data, and waiting
    for the dispatch grace and the next scheduled pass would leave the workers idle.
    """

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Any) -> None:
        if os.environ.get(ROLE_ENV) != "coordinator":
            return
        log.info("coordinator connected: one reconciler pass for what happened meanwhile")
        c.app.send_task(
            "swarmq.reconcile",
            kwargs={"startup": True},
            queue=COORDINATOR_QUEUE,
            kwargsrepr="startup=True",
        )


app.steps["consumer"].add(_ReconcileOnConnect)
