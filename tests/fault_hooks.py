"""Hooks that make the worker processes of the fault tests fail on purpose.

Workers load them through the environment (this folder on PYTHONPATH):

- ``SWARMQ_EVALUATE=fault_hooks:evaluate``: the hooks of tests/distributed_hooks.py, plus
  ``nan`` and ``inf`` (a utility that returns a non-finite number), chosen by the search's
  ``objective.options["hook"]``, or by its name (``returns-nan``, ``returns-distance``) for
  searches submitted through the CLI;
- ``SWARMQ_FAULT_HOOK=fault_hooks:fault``, called at the engine's fault points (see
  ``swarmq.engine._faults``): it SIGKILLs its own process where the test armed it.

A test arms a point with :func:`arm`, which writes ``<SWARMQ_TEST_FAULTS>/<point>.json``: the
context to match (``{"search_id": ..., "iteration": [1, 4]}``: equal, or one of a list) and how
many times each matching context fires (``times``; 0: every time). Each firing is claimed by
creating a marker file with O_EXCL, so two processes never both take the same one, and the
test reads the markers back with :func:`fired`.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import distributed_hooks
import numpy as np

__all__ = ["FAULTS_ENV", "arm", "disarm", "evaluate", "fault", "fired"]

FAULTS_ENV = "SWARMQ_TEST_FAULTS"


def evaluate(
    config: Any, adapter: Any, layout: Any, vector: np.ndarray, split: str
) -> tuple[float, dict[str, Any]]:
    # Searches submitted through the CLI cannot carry a hook option (the utility's options are
    # checked): their name picks it.
    name = config.search.name
    by_name = name.removeprefix("returns-") if name.startswith("returns-") else None
    hook = by_name or config.objective.options.get("hook")
    if hook == "nan":
        return float("nan"), {}
    if hook == "inf":
        return float("inf"), {}
    if hook == "distance":
        return distributed_hooks.distance_utility(config, adapter, layout, vector, split)
    return distributed_hooks.evaluate(config, adapter, layout, vector, split)


def _matches(plan: dict[str, Any], context: dict[str, Any]) -> bool:
    for key, want in plan.items():
        if key == "times":
            continue
        have = context.get(key)
        if isinstance(want, list) and have not in want:
            return False
        if not isinstance(want, list) and have != want:
            return False
    return True


def _claim(folder: Path, point: str, context: dict[str, Any], times: int) -> bool:
    if times == 0:
        return True
    key = "-".join(str(context[k]) for k in sorted(context))
    for k in range(times):
        marker = folder / "fired" / f"{point}@{key}#{k}"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return True
    return False


def fault(point: str, **context: Any) -> None:
    """The fault hook: SIGKILL this process if ``point`` is armed for ``context``."""
    root = os.environ.get(FAULTS_ENV)
    if not root:
        return
    folder = Path(root)
    try:
        plan = json.loads((folder / f"{point}.json").read_text())
    except (OSError, ValueError):
        return
    if _matches(plan, context) and _claim(folder, point, context, int(plan.get("times", 1))):
        # The way an OOM killer or a lost machine ends a process: no cleanup at all.
        os.kill(os.getpid(), signal.SIGKILL)


# --- the test's side ----------------------------------------------------------------------------


def arm(folder: Path, point: str, *, times: int = 1, **match: Any) -> None:
    """Make ``point`` kill the process whose context matches ``match``."""
    (folder / "fired").mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{point}.json"
    tmp.write_text(json.dumps(match | {"times": times}))
    tmp.replace(folder / f"{point}.json")  # whole or absent: a worker never reads half a plan


def disarm(folder: Path, point: str) -> None:
    (folder / f"{point}.json").unlink(missing_ok=True)


def fired(folder: Path, point: str) -> list[str]:
    """The contexts (as marker names) at which ``point`` killed a process so far."""
    markers = folder / "fired"
    if not markers.is_dir():
        return []
    return sorted(p.name for p in markers.iterdir() if p.name.startswith(f"{point}@"))
