"""The model side: a resident base model, positions copied into it, batched greedy generation.

This package's own import is light: torch, transformers and peft are imported only when a name
that needs them is first used (``__getattr__`` below), so ``import swarmq.modeling`` in the CLI or
the coordinator does not pay for them. :func:`check_objective` never imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmq.modeling._check import check_objective
    from swarmq.modeling._device import release_memory, select_device, torch_dtype
    from swarmq.modeling._evaluator import Evaluator, clear_evaluators, get_evaluator
    from swarmq.modeling._judges import (
        clear_judge_models,
        load_classifier_reward,
        load_judge,
    )
    from swarmq.modeling._resident import ResidentModel

__all__ = [
    "Evaluator",
    "ResidentModel",
    "check_objective",
    "clear_evaluators",
    "clear_judge_models",
    "get_evaluator",
    "load_classifier_reward",
    "load_judge",
    "release_memory",
    "select_device",
    "torch_dtype",
]

_HOMES = {
    "Evaluator": "swarmq.modeling._evaluator",
    "ResidentModel": "swarmq.modeling._resident",
    "check_objective": "swarmq.modeling._check",
    "clear_evaluators": "swarmq.modeling._evaluator",
    "get_evaluator": "swarmq.modeling._evaluator",
    "select_device": "swarmq.modeling._device",
    "torch_dtype": "swarmq.modeling._device",
    "release_memory": "swarmq.modeling._device",
    "clear_judge_models": "swarmq.modeling._judges",
    "load_classifier_reward": "swarmq.modeling._judges",
    "load_judge": "swarmq.modeling._judges",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
