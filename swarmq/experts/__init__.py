"""Making and checking expert pools: LoRA experts fine-tuned from one base model.

:func:`train_expert` fine-tunes a LoRA adapter of a base model on a training file (the paper's
item formats, see :mod:`swarmq.experts._data`) and saves it as a peft adapter folder that names
its base. :func:`check_pool` validates a folder of experts before a search: every expert loads,
all share one base model, one tensor layout and one adapter config, and hold finite weights.

This package's own import is light: torch, transformers and peft are imported only when
:func:`train_expert` is first used (``__getattr__`` below), or when :func:`check_pool` is given a
base model to load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from swarmq.experts._check import ExpertRow, PoolCheck, check_pool, same_base
from swarmq.experts._data import (
    TRAIN_SPLITS,
    TrainingData,
    TrainingExample,
    load_training_data,
    render_item,
)
from swarmq.experts._settings import TRAINING_RECORD, ExpertError, TrainResult, TrainSettings

if TYPE_CHECKING:
    from swarmq.experts._train import base_model_reference, train_expert

__all__ = [
    "TRAINING_RECORD",
    "TRAIN_SPLITS",
    "ExpertError",
    "ExpertRow",
    "PoolCheck",
    "TrainResult",
    "TrainSettings",
    "TrainingData",
    "TrainingExample",
    "base_model_reference",
    "check_pool",
    "load_training_data",
    "render_item",
    "same_base",
    "train_expert",
]

_LAZY = {"train_expert", "base_model_reference"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("swarmq.experts._train"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
