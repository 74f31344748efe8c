"""What a distributed worker process knows beyond its runtime: its settings and their policy.

The embedded mode installs no worker settings: its tasks run without heartbeats, and an
unexpected error of an evaluation is retried in the same process until ``max_attempts``
claims (``swarmq resume`` starts the count over).
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from typing import Any

from swarmq.engine import EvaluationPolicy, Runtime, runtime_from_settings
from swarmq.errors import ConfigError
from swarmq.settings import Settings

__all__ = [
    "build_worker_runtime",
    "current_policy",
    "import_evaluate",
    "install_embedded_attempts",
    "install_worker_settings",
    "worker_settings",
]

_settings: Settings | None = None
# The attempt cap of the embedded mode (its runner sets it from its settings).
_embedded_attempts = 3


def install_worker_settings(settings: Settings | None) -> None:
    """Make ``settings`` the ones this process's tasks follow (None: the embedded defaults)."""
    global _settings
    _settings = settings


def install_embedded_attempts(max_attempts: int) -> None:
    """The attempt cap an embedded runner applies to its evaluations."""
    global _embedded_attempts
    _embedded_attempts = max_attempts


def worker_settings() -> Settings | None:
    return _settings


def current_policy() -> EvaluationPolicy:
    """The evaluation policy of this process: the settings' in a worker, else the defaults."""
    s = _settings
    if s is None:
        # An error that is not swarmq's own (a plug-in utility's exception, out of memory) may
        # be transient: the evaluation is sent again, and at the cap the search fails with it.
        return EvaluationPolicy(max_attempts=_embedded_attempts, retry_transient=True)
    return EvaluationPolicy(
        max_attempts=s.max_attempts,
        heartbeat_interval=s.heartbeat_interval,
        heartbeat_timeout=s.heartbeat_timeout,
        retry_transient=True,
    )


def import_evaluate(path: str) -> Callable[..., Any]:
    """Import ``module:function``, an evaluation hook replacing the model (tests, benchmarks)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ConfigError(f"evaluate hook {path!r} is not of the form module:function")
    try:
        fn = pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"cannot import evaluate hook {path!r}: {err}") from None
    if not callable(fn):
        raise ConfigError(f"evaluate hook {path!r} is not callable")
    return fn


def build_worker_runtime(settings: Settings, evaluate: str | None = None) -> Runtime:
    """The runtime of a worker process: the record, and Celery to send follow-up work."""
    from swarmq.execution._app import configure_app
    from swarmq.execution._dispatch import CeleryDispatcher

    dispatcher = CeleryDispatcher(configure_app(settings))
    rt = runtime_from_settings(settings, dispatcher, create=False)
    dispatcher.identity = rt.db.identity
    if evaluate:
        rt.evaluate = import_evaluate(evaluate)
    return rt
