"""Evaluation hooks for the worker processes of tests/test_distributed.py.

Workers load one with ``SWARMQ_EVALUATE=distributed_hooks:evaluate`` (this folder on
PYTHONPATH). ``objective.options["hook"]`` of a search (searches created without the
objective check) picks the behaviour, so one set of workers serves every test: the real model
(no hook: searches submitted through the CLI), the closed-form utility of test_engine
(``distance``), a slow one (``slow``, ``options["sleep"]`` seconds), or one that kills its own
process (``kill``).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
from searches import distance_utility


def evaluate(
    config: Any, adapter: Any, layout: Any, vector: np.ndarray, split: str
) -> tuple[float, dict[str, Any]]:
    options = config.objective.options
    hook = options.get("hook", "model")
    if hook == "model":
        from swarmq.engine._runtime import model_evaluate

        return model_evaluate(config, adapter, layout, vector, split)
    if hook == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if hook == "slow":
        time.sleep(float(options.get("sleep", 1.0)))
    return distance_utility(config, adapter, layout, vector, split)
