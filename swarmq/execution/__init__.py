"""Execution: the Celery app and tasks, the distributed client and workers, and the embedded
(in-process) runner."""

from swarmq.execution._app import COORDINATOR_QUEUE, EVALUATE_QUEUE, app, configure_app
from swarmq.execution._client import DistributedClient, require_broker
from swarmq.execution._dispatch import (
    CeleryDispatcher,
    CountingBrokerView,
    RedisBrokerView,
    broker_view,
)
from swarmq.execution._embedded import EmbeddedRunner, LocalQueue
from swarmq.execution._supervisor import parse_gpus, supervise, worker_specs

__all__ = [
    "COORDINATOR_QUEUE",
    "EVALUATE_QUEUE",
    "CeleryDispatcher",
    "CountingBrokerView",
    "DistributedClient",
    "EmbeddedRunner",
    "LocalQueue",
    "RedisBrokerView",
    "app",
    "broker_view",
    "configure_app",
    "parse_gpus",
    "require_broker",
    "supervise",
    "worker_specs",
]
