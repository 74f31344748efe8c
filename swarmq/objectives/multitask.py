"""``multitask``: the harmonic mean of several tasks' utilities (the paper's multi-task domains).

The paper adapts one model to a domain of two tasks (legal: Hearsay and Citation Prediction
Classification; medical: MedQA and MedMCQA; ...) and optimises the harmonic mean of the two
accuracies, which rewards a model only when it does well on both. Here a domain is one dataset
file whose items name their task in one key (``task_key``, default ``"task"``); each task is
scored by its own registered utility with its own options. :func:`merge_task_files` builds such
a file from one file per task; a file whose items already name a sub-task (NLGraph's
``"domain"``: ``shortest_path`` / ``connectivity``) is used as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from swarmq.errors import DatasetError, UtilityError
from swarmq.objectives._base import TextGenerator, Utility, UtilityOptions, UtilityResult
from swarmq.objectives._data import SPLITS, Dataset, check_items, load_dataset
from swarmq.objectives._registry import build_utility, register_utility

__all__ = ["Multitask", "TaskSpec", "harmonic_mean", "merge_task_files"]


def harmonic_mean(values: Sequence[float]) -> float:
    """``n / sum(1 / v)``; 0 when any value is 0 (its limit). Values must be non-negative.

    The reference code replaces two zero accuracies by a dummy 0.01 each (giving 0.01); here
    any zero gives 0, so that a model failing one task entirely is never preferred to one that
    does not.
    """
    if not values:
        raise UtilityError("the harmonic mean of no values is undefined")
    negative = [v for v in values if v < 0]
    if negative:
        raise UtilityError(
            f"the harmonic mean needs non-negative task utilities, got {negative[0]!r}; use "
            "tasks whose utility is >= 0 (accuracies, probabilities, normalised rewards)"
        )
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


class TaskSpec(UtilityOptions):
    """One task of a domain: a registered utility (or a plug-in spec) and its options."""

    utility: str = Field(min_length=1, description="the task's utility, e.g. 'multiple_choice'")
    options: dict[str, Any] = Field(default_factory=dict, description="that utility's options")


class MultitaskOptions(UtilityOptions):
    """Options of ``multitask``."""

    tasks: dict[str, TaskSpec] = Field(
        description="task name -> {utility, options}; at least two tasks"
    )
    task_key: str = Field(
        "task", min_length=1, description="the item key holding the item's task name"
    )

    @field_validator("tasks")
    @classmethod
    def _two_or_more(cls, value: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
        if len(value) < 2:
            raise ValueError(
                f"a multi-task objective needs at least two tasks, got {len(value)} "
                f"({', '.join(value) or 'none'})"
            )
        if any(not name for name in value):
            raise ValueError("task names must be non-empty")
        return value


@register_utility("multitask")
class Multitask(Utility):
    """Harmonic mean of each task's utility on the items of that task.

    Items: ``{task_key: NAME, ...}`` plus the keys the task's utility needs. Each task must have
    items in both splits; with ``dev_limit``/``test_limit`` each task must still keep at least
    one item among the first K (files built by :func:`merge_task_files` interleave tasks).
    Metrics hold each task's value and metrics under ``tasks``; an item's score is its score
    under its own task's utility.
    """

    example_keys: ClassVar[tuple[str, ...]] = ()  # per task, checked in check_dataset
    Options = MultitaskOptions
    options: MultitaskOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.tasks: dict[str, Utility] = {}
        for name, spec in self.options.tasks.items():
            try:
                sub = build_utility(spec.utility, spec.options)
            except UtilityError as err:
                raise UtilityError(f"multitask: task {name!r}: {err}") from None
            if isinstance(sub, Multitask):
                raise UtilityError(
                    f"multitask: task {name!r} is itself a multitask objective; list its tasks "
                    "directly instead"
                )
            self.tasks[name] = sub

    # ------------------------------------------------------------------ data
    def _groups(
        self, items: Sequence[Mapping[str, Any]], where: str
    ) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
        key = self.options.task_key
        groups: dict[str, list[tuple[int, Mapping[str, Any]]]] = {n: [] for n in self.tasks}
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or key not in item:
                raise DatasetError(
                    f"{where}[{i}] has no key {key!r} naming its task (one of "
                    f"{', '.join(self.tasks)}); set the option task_key to the key your items use"
                )
            task = item[key]
            if not isinstance(task, str) or task not in groups:
                raise DatasetError(
                    f"{where}[{i}][{key!r}] = {task!r} is not one of the tasks "
                    f"{', '.join(self.tasks)}; list every task of the file under options.tasks"
                )
            groups[task].append((i, item))
        return groups

    def check_dataset(self, dataset: Dataset) -> None:
        """Every item names a configured task, every task has items in both splits, and each
        task's items satisfy that task's utility (keys, shapes and its own checks)."""
        where = f"dataset file {str(dataset.path)!r}"
        per_task: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in self.tasks}
        for split in SPLITS:
            groups = self._groups(dataset.split(split), f"{where}: {split}")
            for name, pairs in groups.items():
                if not pairs:
                    raise DatasetError(
                        f"{where}: task {name!r} has no items in the {split!r} split (no item "
                        f"has {self.options.task_key!r} = {name!r})"
                    )
                check_items(dataset.path, split, pairs, self.tasks[name].example_keys)
                per_task[name][split] = [dict(item) for _, item in pairs]
        for name, sub in self.tasks.items():
            sub_data = Dataset(
                name=f"{dataset.name}:{name}",
                path=dataset.path,
                dev=tuple(per_task[name]["dev"]),
                test=tuple(per_task[name]["test"]),
                extra=dataset.extra,
            )
            try:
                sub.check_dataset(sub_data)
            except DatasetError as err:
                raise DatasetError(
                    f"task {name!r} (its item indices count only items with "
                    f"{self.options.task_key!r} = {name!r}): {err}"
                ) from None

    def _split(
        self, examples: Sequence[Mapping[str, Any]]
    ) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
        groups = self._groups(examples, "examples")
        empty = [name for name, pairs in groups.items() if not pairs]
        if empty:
            raise UtilityError(
                f"multitask: task(s) {', '.join(map(repr, empty))} have no item among the "
                f"{len(examples)} examples given; a dev_limit/test_limit that keeps only the "
                "first items may have cut them off (interleave the tasks in the file, as "
                "merge_task_files does, or raise the limit)"
            )
        return groups

    # ------------------------------------------------------------------ scoring
    def _combine(
        self,
        results: Mapping[str, UtilityResult],
        groups: Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]],
        n: int,
    ) -> UtilityResult:
        values = {name: r.value for name, r in results.items()}
        negative = {name: v for name, v in values.items() if v < 0}
        if negative:
            name, v = next(iter(negative.items()))
            raise UtilityError(
                f"multitask: task {name!r} has utility {v!r} < 0; the harmonic mean needs "
                "non-negative task utilities (accuracies, probabilities, normalised rewards)"
            )
        return UtilityResult(
            value=harmonic_mean(list(values.values())),
            item_scores=_item_scores(results, groups, n),
            metrics={
                "n": n,
                "tasks": {
                    name: {"value": r.value, "metrics": r.metrics} for name, r in results.items()
                },
            },
        )

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Score each task's items with its utility; return the harmonic mean of the values."""
        if not examples:
            raise UtilityError("multitask: no examples to score")
        groups = self._split(examples)
        results = {
            name: self.tasks[name].score(generator, [item for _, item in pairs])
            for name, pairs in groups.items()
        }
        return self._combine(results, groups, len(examples))

    def check_predictions(self) -> None:
        """Supported when every task's utility gives per-example answers."""
        for name, sub in self.tasks.items():
            try:
                sub.check_predictions()
            except UtilityError as err:
                raise UtilityError(
                    f"multitask: task {name!r}: {err}; so this objective's models cannot be "
                    "ensembled by majority vote"
                ) from None

    def predict(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> list[str | None]:
        """Each task's utility's answers, in the examples' order (every task must give them)."""
        self.check_predictions()
        if not examples:
            raise UtilityError("multitask: no examples to predict")
        out: list[str | None] = [None] * len(examples)
        for name, pairs in self._split(examples).items():
            answers = self.tasks[name].predict(generator, [item for _, item in pairs])
            for (i, _), answer in zip(pairs, answers, strict=True):
                out[i] = answer
        return out

    def score_predictions(
        self, predictions: Sequence[str | None], examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """The harmonic mean of each task's utility of the given answers."""
        if not examples or len(predictions) != len(examples):
            raise UtilityError(
                f"multitask: {len(predictions)} predictions for {len(examples)} examples"
            )
        groups = self._split(examples)
        results = {
            name: self.tasks[name].score_predictions(
                [predictions[i] for i, _ in pairs], [item for _, item in pairs]
            )
            for name, pairs in groups.items()
        }
        return self._combine(results, groups, len(examples))


def _item_scores(
    results: Mapping[str, UtilityResult],
    groups: Mapping[str, Sequence[tuple[int, Mapping[str, Any]]]],
    n: int,
) -> tuple[float, ...] | None:
    """Each item's score under its own task's utility, in the examples' order; ``None`` when a
    task's utility gives no item scores.

    The value is the harmonic mean of the tasks' utilities, which no per-item score can average
    to; an item's score is what it contributes to its own task's utility (1/0 for an accuracy).
    """
    out = [0.0] * n
    for name, pairs in groups.items():
        scores = results[name].item_scores
        if scores is None:
            return None
        for (i, _), score in zip(pairs, scores, strict=True):
            out[i] = score
    return tuple(out)


def merge_task_files(
    files: Mapping[str, str | Path],
    out: str | Path,
    *,
    task_key: str = "task",
    name: str | None = None,
) -> Path:
    """Write one multi-task dataset file from one file per task (``{task name: path}``).

    Each item is copied with ``task_key`` set to its task's name. Items of the tasks are
    interleaved (first item of each task, then the second of each, ...), so that keeping the
    first K items (``dev_limit``) keeps every task. An item that already has ``task_key`` is
    refused rather than overwritten. Returns the written path.
    """
    if len(files) < 2:
        raise DatasetError(f"merging tasks needs at least two files, got {len(files)}")
    loaded = {task: load_dataset(path) for task, path in files.items()}
    merged: dict[str, Any] = {"dataset": name or "+".join(loaded)}
    for split in SPLITS:
        lists = {task: ds.split(split) for task, ds in loaded.items()}
        items: list[dict[str, Any]] = []
        for k in range(max(len(v) for v in lists.values())):
            for task, split_items in lists.items():
                if k >= len(split_items):
                    continue
                item = split_items[k]
                if task_key in item:
                    raise DatasetError(
                        f"dataset file {str(loaded[task].path)!r}: {split}[{k}] already has "
                        f"key {task_key!r} (= {item[task_key]!r}); choose another task_key"
                    )
                items.append({**item, task_key: task})
        merged[split] = items
    path = Path(out)
    path.write_text(json.dumps(merged, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
