"""Execution: the Celery app and tasks, and the embedded (in-process) runner."""

from swarmq.execution._app import app
from swarmq.execution._embedded import EmbeddedRunner, LocalQueue

__all__ = ["EmbeddedRunner", "LocalQueue", "app"]
