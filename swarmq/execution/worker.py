"""The Celery app as worker processes and Flower load it: ``celery -A swarmq.execution.worker``.

Importing this module resolves the settings from the environment (and the settings file),
configures the app with them, and hooks the worker's start-up: each pool process opens its own
database connections and installs its runtime (connections must not cross a fork), and a
coordinator worker starts with one reconciler pass. ``swarmq worker`` runs these processes for
you with the right queues.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import worker_process_init, worker_ready

from swarmq.engine import install_runtime
from swarmq.execution._app import COORDINATOR_QUEUE, configure_app
from swarmq.execution._context import build_worker_runtime, install_worker_settings
from swarmq.settings import load_settings

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


@worker_ready.connect
def _coordinator_ready(sender: Any = None, **_: Any) -> None:
    if os.environ.get(ROLE_ENV) == "coordinator":
        log.info("coordinator ready: one reconciler pass for what happened while it was down")
        app.send_task(
            "swarmq.reconcile",
            kwargs={"startup": True},
            queue=COORDINATOR_QUEUE,
            kwargsrepr="startup=True",
        )
