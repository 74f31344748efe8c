"""The Celery application and its reliability policy.

Only JSON crosses the broker (no pickle): task arguments are ids and small numbers, and
positions travel through the artifact store by hash. Evaluations go to the ``swarmq.evaluate``
queue (GPU workers), coordinations and the reconciler to ``swarmq.coordinator``, so a
coordination never waits behind a queue of hour-long evaluations.

The settings that do not depend on the deployment are set here once; :func:`configure_app`
adds the broker, the time limits and the reconciler's schedule from :class:`Settings`.
"""

from __future__ import annotations

import os

from celery import Celery

from swarmq.settings import Settings

__all__ = ["COORDINATOR_QUEUE", "EVALUATE_QUEUE", "app", "configure_app"]

EVALUATE_QUEUE = "swarmq.evaluate"
COORDINATOR_QUEUE = "swarmq.coordinator"

app = Celery("swarmq", include=["swarmq.execution.tasks"])
app.conf.update(
    # The embedded mode needs no broker: it runs the tasks with Task.apply.
    broker_url=os.environ.get("SWARMQ_BROKER_URL") or "memory://",
    # JSON only: a pickled message would let anyone who can write to the broker run code on
    # every worker, and the arguments (ids, numbers) need nothing more.
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    accept_content=["json"],
    # Results live in the database, not in a result backend.
    task_ignore_result=True,
    # Acknowledge after the task ran, so a worker killed mid-evaluation leaves the message
    # to be delivered again; the database makes the replay harmless.
    task_acks_late=True,
    # ...and when the pool process dies (OOM killer, segfault), put the message back at once
    # rather than dropping it. A task that kills its worker every time is stopped by the attempt
    # cap kept in the database (max_attempts), not by the broker.
    task_reject_on_worker_lost=True,
    # An evaluation that raised has already recorded its error and, if attempts are left, sent
    # itself again: its own message is done. A hard time limit likewise: the reconciler sends
    # the evaluation again once its heartbeat stops.
    task_acks_on_failure=True,
    task_acks_on_timeout=True,
    # One message at a time per process: evaluations are long, and a prefetched message would
    # wait behind the running one instead of going to an idle worker.
    worker_prefetch_multiplier=1,
    # A broker restart must not stop the workers: reconnect for as long as it takes.
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # A lost broker connection does not abort a running evaluation (hours of GPU work): if the
    # broker redelivers its message meanwhile, the copy finds it held by a live worker and is
    # dropped (see EvaluationPolicy).
    worker_cancel_long_running_tasks_on_connection_loss=False,
    # No task events unless someone watches: each would be one more broker message per task
    # (received, started, succeeded, and sent on the sending side), a cost every evaluation
    # pays. Flower turns the workers' events on when it starts (its enable_events option,
    # on by default) and shows the tasks from them.
    worker_send_task_events=False,
    task_send_sent_event=False,
    task_routes={
        "swarmq.evaluate": {"queue": EVALUATE_QUEUE},
        "swarmq.coordinate": {"queue": COORDINATOR_QUEUE},
        "swarmq.reconcile": {"queue": COORDINATOR_QUEUE},
    },
    task_default_queue=EVALUATE_QUEUE,
)


def configure_app(settings: Settings) -> Celery:
    """Point the app at the settings' broker, with their time limits and reconciler schedule."""
    broker_url = settings.broker_url or "memory://"
    if broker_url != app.conf.broker_url:
        _drop_connection_pools()
    app.conf.update(
        broker_url=broker_url,
        # The soft limit raises SoftTimeLimitExceeded in the task (recorded, retried within
        # max_attempts); the hard limit kills a process that does not return after it.
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.time_limit,
        # Redis hands an unacknowledged message to another worker after the visibility
        # timeout. With late acknowledgement a message stays unacknowledged while its task runs:
        # the timeout must exceed the hard time limit or a live evaluation runs twice (the
        # settings refuse anything else). RabbitMQ's counterpart is the server's
        # consumer_timeout, which must be raised the same way (see docs/distributed.md, "RabbitMQ").
        broker_transport_options={"visibility_timeout": settings.effective_visibility_timeout},
        beat_schedule={
            "swarmq-reconcile": {
                "task": "swarmq.reconcile",
                "schedule": settings.reconcile_interval,
                # A pass that could not start before the next one is due is useless.
                "options": {"queue": COORDINATOR_QUEUE, "expires": settings.reconcile_interval},
            }
        },
    )
    return app


def _drop_connection_pools() -> None:
    # Celery creates its connection and producer pools on the first send, for the broker of
    # that moment, and keeps them: without this, a process that configures the app again for
    # another broker (a second client, a test) would go on publishing to the first one. The
    # old pools are only let go, not closed: kombu keeps them in a registry by broker and
    # hands the same object back if the app returns to that broker.
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
