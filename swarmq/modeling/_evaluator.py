"""The evaluator: utility of a position = score of the resident model with that position loaded.

Prompts are given to the model as plain text, without the tokenizer's chat template: this is how
the paper evaluates its single-task and multi-task objectives (multiple choice, exact match).
"""

from __future__ import annotations

import gc
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from swarmq.config import SearchConfig
from swarmq.errors import UtilityError
from swarmq.modeling._resident import ResidentModel
from swarmq.objectives import Dataset, Utility, UtilityResult, load_dataset, utility_from_config
from swarmq.weights._layout import Layout

__all__ = ["MAX_RESIDENT_MODELS", "Evaluator", "clear_evaluators", "get_evaluator"]


class Evaluator:
    """Evaluates positions of one pool against one objective, on a base model kept in memory.

    ``adapter_config`` is the pool's ``adapter_config.json`` content: the base model is wrapped
    with that peft adapter and a position is the adapter's tensors. ``None`` means the pool is
    made of full-weight files: a position then overwrites the base model's own tensors by key.

    The evaluator is itself a :class:`swarmq.objectives.TextGenerator`: greedy, batched
    (``[objective] batch_size``), plain prompts (no chat template).
    """

    def __init__(
        self,
        config: SearchConfig,
        adapter_config: Mapping[str, Any] | None = None,
        *,
        resident: ResidentModel | None = None,
    ) -> None:
        self.config = config
        self.utility: Utility = utility_from_config(config.objective)
        self._resident = resident or ResidentModel.load(config.base_model, adapter_config)
        self._dataset: Dataset | None = None
        self._data_lock = threading.Lock()

    @property
    def device(self) -> str:
        """The torch device the model lives on (``"cpu"``, ``"cuda"``, ...)."""
        return self._resident.device

    @property
    def dataset(self) -> Dataset:
        """The objective's dataset, loaded and checked on first use, then cached."""
        with self._data_lock:
            if self._dataset is None:
                dataset = load_dataset(self.config.objective.dataset, self.utility.example_keys)
                self.utility.check_dataset(dataset)
                self._dataset = dataset
            return self._dataset

    def examples(self, split: Literal["dev", "test"]) -> tuple[dict[str, Any], ...]:
        """The items of ``split`` after ``dev_limit`` / ``test_limit`` (the first K items)."""
        if split not in ("dev", "test"):
            raise UtilityError(f"unknown split {split!r}; evaluate on 'dev' or 'test'")
        objective = self.config.objective
        limit = objective.dev_limit if split == "dev" else objective.test_limit
        items = self.dataset.split(split)
        return items if limit is None else items[:limit]

    def set_position(self, layout: Layout, vector: np.ndarray) -> None:
        """Load a position (a flat float32 vector over ``layout``) into the model, in place.

        Raises :class:`swarmq.errors.ModelError` when the layout has keys the model lacks, or (for
        an adapter) lacks adapter keys the model has, or shapes differ.
        """
        self._resident.set_position(layout, vector)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` with the current position: new text only."""
        return self._resident.generate(prompts, max_new_tokens, self.config.objective.batch_size)

    def evaluate(
        self, layout: Layout, vector: np.ndarray, split: Literal["dev", "test"] = "dev"
    ) -> UtilityResult:
        """The utility of a position on ``split``: set the position, then score the utility."""
        examples = self.examples(split)
        # Holding the model's lock makes "set position, generate" atomic if threads share it.
        with self._resident.lock:
            self.set_position(layout, vector)
            result = self.utility.score(self, examples)
        if not isinstance(result, UtilityResult):
            raise UtilityError(
                f"utility {self.utility.name!r} returned {type(result).__name__}, "
                "not a UtilityResult"
            )
        return result


# ---------------------------------------------------------------------------- per-process cache

#: How many base models a process keeps loaded. One: a GPU rarely holds two, and a worker that
#: switches base model should free the old one before loading the next.
MAX_RESIDENT_MODELS = 1

_CACHE_LOCK = threading.Lock()
_MODELS: OrderedDict[tuple[str, ...], ResidentModel] = OrderedDict()
_EVALUATORS: dict[tuple[tuple[str, ...], str], Evaluator] = {}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency of this package
        pass


def get_evaluator(config: SearchConfig, adapter_config: Mapping[str, Any] | None) -> Evaluator:
    """The process's evaluator for this base model, pool adapter and objective (built once).

    Base models are cached by (path, dtype, device, adapter_config), so evaluators of different
    objectives (and different searches) over the same base model share one resident copy. When a
    different base model is requested, the least recently used one is dropped first
    (:data:`MAX_RESIDENT_MODELS`).
    """
    base = config.base_model
    model_key = (base.path, base.dtype, base.device, _canonical(adapter_config))
    key = (model_key, _canonical(config.objective.model_dump(mode="json")))
    # Bad options fail here, before minutes are spent loading a model.
    utility_from_config(config.objective)
    with _CACHE_LOCK:
        evaluator = _EVALUATORS.get(key)
        if evaluator is not None:
            _MODELS.move_to_end(model_key)
            return evaluator
        resident = _MODELS.get(model_key)
        if resident is None:
            while len(_MODELS) >= MAX_RESIDENT_MODELS:
                old_key, _ = _MODELS.popitem(last=False)
                for k in [k for k in _EVALUATORS if k[0] == old_key]:
                    del _EVALUATORS[k]
                _release_memory()
            resident = ResidentModel.load(base, adapter_config)
            _MODELS[model_key] = resident
        _MODELS.move_to_end(model_key)
        evaluator = Evaluator(config, adapter_config, resident=resident)
        _EVALUATORS[key] = evaluator
        return evaluator


def clear_evaluators() -> None:
    """Drop every cached evaluator and base model of this process (frees their memory)."""
    with _CACHE_LOCK:
        _EVALUATORS.clear()
        _MODELS.clear()
    _release_memory()
