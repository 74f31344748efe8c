"""The evaluator: utility of a position = score of the resident model with that position loaded.

Prompts are given to the model as plain text, without the tokenizer's chat template: this is how
the paper evaluates its single-task and multi-task objectives (multiple choice, exact match).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from swarmq.config import SearchConfig
from swarmq.errors import SwarmqError, UtilityError
from swarmq.modeling._batched import Request, score_together
from swarmq.modeling._device import release_memory
from swarmq.modeling._judges import LoadsModels
from swarmq.modeling._resident import ResidentModel
from swarmq.objectives import Dataset, Utility, UtilityResult, load_dataset, utility_from_config
from swarmq.weights import Layout

__all__ = ["MAX_RESIDENT_MODELS", "Evaluator", "clear_evaluators", "get_evaluator"]


class Evaluator(LoadsModels):
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
        # One utility instance per slot of a shared batch: their scores run in parallel threads.
        self._slot_utilities: list[Utility] = []
        # The base model's own weights of a full-weight pool, read once for merges.
        self._base: np.ndarray | None = None

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

    def generate_chat(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy replies to ``prompts`` sent as chat user turns (the base model's chat template).

        Makes the evaluator a :class:`swarmq.objectives.ChatGenerator`.
        """
        texts = self._resident.chat_prompts(prompts)
        return self._resident.generate(texts, max_new_tokens, self.config.objective.batch_size)

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """Summed log-probabilities of ``continuations`` given ``prompts``, current position.

        Makes the evaluator a :class:`swarmq.objectives.LikelihoodScorer`; batched by
        ``[objective] batch_size``.
        """
        return self._resident.loglikelihood(
            prompts, continuations, self.config.objective.batch_size
        )

    def loglikelihood_tokens(
        self, prompts: list[str], continuations: list[str]
    ) -> list[tuple[float, int]]:
        """:meth:`loglikelihood` with the number of tokens each continuation was scored over.

        Makes the evaluator a :class:`swarmq.objectives.TokenLikelihoodScorer`.
        """
        return self._resident.loglikelihood_tokens(
            prompts, continuations, self.config.objective.batch_size
        )

    def evaluate(
        self, layout: Layout, vector: np.ndarray, split: Literal["dev", "test"] = "dev"
    ) -> UtilityResult:
        """The utility of a position on ``split``: set the position, then score the utility."""
        examples = self.examples(split)
        # Holding the model's lock makes "set position, generate" atomic if threads share it.
        with self._resident.lock:
            self.set_position(layout, vector)
            result = self.utility.score(self, examples)
        return self._checked(result, len(examples))

    def _checked(self, result: Any, n: int) -> UtilityResult:
        """``result`` if it is a UtilityResult whose item scores (if any) number ``n``."""
        if not isinstance(result, UtilityResult):
            raise UtilityError(
                f"utility {self.utility.name!r} returned {type(result).__name__}, "
                "not a UtilityResult"
            )
        if result.item_scores is not None and len(result.item_scores) != n:
            raise UtilityError(
                f"utility {self.utility.name!r} returned {len(result.item_scores)} item scores "
                f"for {n} examples; give one score per example, in the examples' order"
            )
        return result

    def merge(
        self,
        layout: Layout,
        vectors: Sequence[np.ndarray],
        weights: Sequence[float],
        method: str,
        density: float,
        seed: int,
    ) -> np.ndarray:
        """Merge positions with peft's ``method`` (``task_arithmetic``, ``ties``, ``dare_ties``,
        ``dare_linear``): a LoRA pool through ``add_weighted_adapter``, a full-weight pool through
        ``peft.utils.merge_utils`` around the base model's weights (see
        :mod:`swarmq.modeling._merge`). Returns a position of ``layout``."""
        from swarmq.modeling._merge import combination_type, merge_task_vectors, read_base_tensors

        kind = combination_type(method)
        if self._resident.adapter:
            return self._resident.merge_adapters(layout, vectors, weights, kind, density, seed)
        if self._base is None:
            self._base = read_base_tensors(self.config.base_model.path, layout)
        return merge_task_vectors(layout, self._base, vectors, weights, method, density, seed)

    # ------------------------------------------------------------------ several positions at once
    #: Model methods a utility may call besides ``generate`` and ``generate_chat``: in a shared
    #: batch they run for one particle at a time, with its position in the default adapter.
    PER_PARTICLE_METHODS: tuple[str, ...] = ("loglikelihood", "loglikelihood_tokens")

    @property
    def particles_per_batch(self) -> int:
        """How many positions :meth:`evaluate_many` scores in one mixed-adapter batch.

        ``[objective] particles_per_batch``, or 1 where the pool is not LoRA (peft mixes only
        LoRA adapters within a batch).
        """
        return self.config.objective.particles_per_batch if self._resident.mixed else 1

    def evaluate_many(
        self,
        layout: Layout,
        vectors: Sequence[np.ndarray],
        split: Literal["dev", "test"] = "dev",
    ) -> list[UtilityResult]:
        """The utilities of several positions, in order; equal to :meth:`evaluate` on each.

        Up to :attr:`particles_per_batch` positions are written into adapter slots and scored
        together: each runs the utility's own ``score``, and the generation calls of all of them
        are served by one mixed-adapter ``generate`` per step (see
        :meth:`ResidentModel.generate_mixed` for why the outputs do not depend on the company).
        """
        vectors = list(vectors)
        per_batch = self.particles_per_batch
        if per_batch <= 1 or len(vectors) <= 1:
            return [self.evaluate(layout, vector, split) for vector in vectors]
        examples = self.examples(split)
        methods = [m for m in self.PER_PARTICLE_METHODS if hasattr(self, m)]
        results: list[UtilityResult] = []
        for start in range(0, len(vectors), per_batch):
            group = vectors[start : start + per_batch]
            if len(group) == 1:
                results.append(self.evaluate(layout, group[0], split))
                continue
            with self._resident.lock:
                self._resident.ensure_slots(len(group))
                for slot, vector in enumerate(group):
                    self._resident.set_position(layout, vector, slot=slot)
                while len(self._slot_utilities) < len(group):
                    self._slot_utilities.append(utility_from_config(self.config.objective))

                def serve(requests: list[Request], group: list[np.ndarray] = group) -> None:
                    self._serve(layout, group, requests)

                together = score_together(
                    self._slot_utilities[: len(group)], examples, serve, methods, self.device
                )
                results.extend(self._checked(r, len(examples)) for r in together)
        return results

    def _serve(self, layout: Layout, group: list[np.ndarray], requests: list[Request]) -> None:
        """Answer one round of a shared batch (runs in the thread holding the model's lock)."""
        batch_size = self.config.objective.batch_size
        generations: dict[int, list[tuple[Request, list[str]]]] = {}
        for request in requests:
            try:
                if request.method in ("generate", "generate_chat"):
                    prompts, max_new_tokens = request.args
                    if request.method == "generate_chat":
                        prompts = self._resident.chat_prompts(prompts)
                    generations.setdefault(max_new_tokens, []).append((request, prompts))
                else:
                    # Not batched, but exactly the single evaluation's call: the particle's
                    # position goes into the default adapter, which no slot uses.
                    self._resident.set_position(layout, group[request.slot])
                    method = getattr(self, request.method)
                    request.result = method(*request.args, **request.kwargs)
            except SwarmqError as err:
                # A refusal of this particle's input (a continuation without tokens, no chat
                # template) is its utility's to see, as in a single evaluation. Anything else
                # (out of memory, a time limit) stops the whole batch.
                request.error = err
        for max_new_tokens, members in generations.items():
            outputs = self._resident.generate_mixed(
                [(request.slot, prompts) for request, prompts in members],
                max_new_tokens,
                batch_size,
            )
            for (request, _), output in zip(members, outputs, strict=True):
                request.result = output


# ---------------------------------------------------------------------------- per-process cache

#: How many base models a process keeps loaded. One: a GPU rarely holds two, and a worker that
#: switches base model should free the old one before loading the next.
MAX_RESIDENT_MODELS = 1

_CACHE_LOCK = threading.Lock()
_MODELS: OrderedDict[tuple[str, ...], ResidentModel] = OrderedDict()
_EVALUATORS: dict[tuple[tuple[str, ...], str], Evaluator] = {}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


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
                release_memory()
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
    release_memory()
