"""The Celery application.

Only JSON crosses the broker (no pickle): task arguments are ids and small numbers, and
positions travel through the artifact store by hash.
"""

from __future__ import annotations

import os

from celery import Celery

__all__ = ["app"]

app = Celery("swarmq", include=["swarmq.execution.tasks"])
app.conf.update(
    broker_url=os.environ.get("SWARMQ_BROKER_URL", "memory://"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Results live in the database, not in a result backend.
    task_ignore_result=True,
    # Acknowledge after the task ran, so a worker killed mid-evaluation leaves the message
    # to be delivered again; the database makes the replay harmless.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One message at a time per process: evaluations are long, and a prefetched message would
    # wait behind the running one instead of going to an idle worker.
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
