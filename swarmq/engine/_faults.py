"""Fault points: named moments of the engine at which a test can crash the process.

The recovery guarantees hold at moments no outside signal can hit reliably, such as "the
coordinator committed the next iteration but has not sent its evaluations yet". A fault point
calls the function named by ``SWARMQ_FAULT_HOOK`` (``module:function``, for tests only) with
the point's name and context, and the function may kill the process there. Without the
variable a fault point does nothing.

The points: ``coordinate.started`` (before the coordination's transaction),
``coordinate.committed`` (after its commit, before its messages are sent) and
``evaluate.recorded`` (after an evaluation's result commits, before the coordination is sent).
"""

from __future__ import annotations

import os
import pkgutil
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from swarmq.errors import ConfigError

__all__ = ["FAULT_HOOK_ENV", "fault_point"]

FAULT_HOOK_ENV = "SWARMQ_FAULT_HOOK"


@lru_cache(maxsize=4)
def _hook(spec: str) -> Callable[..., Any]:
    try:
        fn = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{FAULT_HOOK_ENV}={spec!r} cannot be imported: {err}") from None
    if not callable(fn):
        raise ConfigError(f"{FAULT_HOOK_ENV}={spec!r} is not callable")
    return fn


def fault_point(name: str, **context: Any) -> None:
    """Give the test hook, if one is set, the chance to crash the process here."""
    spec = os.environ.get(FAULT_HOOK_ENV)
    if spec:
        _hook(spec)(name, **context)
