"""Reading an expert's training data: the paper's item formats, rendered as prompt + completion.

A training file is either

* a JSON object with splits, ``{"dataset": NAME, "train": [...], "dev": [...], "test": [...]}``
  (the paper's evaluation files have ``dev`` and ``test``; ``test`` is never trained on),
* a JSON list of items, or
* a JSONL file (``.jsonl``): one item per line.

Each item is rendered as a ``(prompt, completion)`` pair, and the loss is taken on the
completion only. The prompts are the ones swarmq's utilities send to the model, so an expert
learns exactly the format it is later scored in:

* ``{"prompt": str, "completion": str}``: used as given;
* ``{"input": str, "output": str}``: the paper's instruction-tuning format;
* ``{"question": str, "choices": {"A": str, ...}, "answer": "A"}``: the ``multiple_choice``
  prompt (:func:`swarmq.objectives.multiple_choice.build_prompt`) completed by the gold letter;
* ``{"question": str, "answer": str}``: the question (the ``exact_match`` default prompt)
  completed by the answer.

Nothing here imports torch.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmq.errors import DatasetError
from swarmq.objectives.multiple_choice import DEFAULT_INSTRUCTION, build_prompt

__all__ = ["TRAIN_SPLITS", "TrainingData", "TrainingExample", "load_training_data", "render_item"]

# Splits an expert may be trained on; a file's ``test`` split is kept for the final report.
TRAIN_SPLITS = ("train", "dev")

_ACCEPTED = (
    'items {"prompt": str, "completion": str}, {"input": str, "output": str}, '
    '{"question": str, "choices": {"A": str, ...}, "answer": "A"} or '
    '{"question": str, "answer": str}'
)
_FILES = (
    'a JSON object with splits {"dataset": NAME, "train" or "dev": [ITEM, ...]}, a JSON list '
    "of items, or a .jsonl file of one item per line"
)
_LETTER = re.compile(r"^[A-Za-z]$")


@dataclass(frozen=True)
class TrainingExample:
    """One training pair: the model reads ``prompt`` and learns to continue with ``completion``."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class TrainingData:
    """The rendered items of one split of a training file.

    ``split`` is ``None`` for a list or JSONL file; ``formats`` counts items by their format
    (``prompt_completion``, ``input_output``, ``multiple_choice``, ``question_answer``).
    """

    name: str
    path: Path
    split: str | None
    examples: tuple[TrainingExample, ...]
    formats: dict[str, int]


def _join(prompt: str, text: str) -> str:
    # The utilities send the prompt without a trailing space and the model continues it, so the
    # completion carries the separating space (a BPE tokenizer then encodes " A" as one token).
    if not prompt or prompt[-1:].isspace() or text[:1].isspace():
        return text
    return f" {text}"


def _where(path: Path, split: str | None, index: int) -> str:
    return f"training file {str(path)!r}: " + (
        f"{split}[{index}]" if split is not None else f"item {index}"
    )


def render_item(
    item: Any, where: str = "item", *, instruction: str = DEFAULT_INSTRUCTION
) -> tuple[TrainingExample, str]:
    """Render one item as a training pair; returns the pair and the name of its format.

    Raises :class:`DatasetError`, prefixed with ``where``, for an item of no accepted shape.
    """
    if not isinstance(item, dict):
        raise DatasetError(f"{where} is a JSON {type(item).__name__}; expected {_ACCEPTED}")

    def text(key: str) -> str:
        value = item[key]
        if isinstance(value, int) and not isinstance(value, bool) and key == "answer":
            return str(value)  # exact-match sets may store numbers as JSON numbers
        if not isinstance(value, str):
            raise DatasetError(f"{where}[{key!r}] is a {type(value).__name__}, expected a string")
        if not value.strip():
            raise DatasetError(f"{where}[{key!r}] is empty; a training item needs text there")
        return value

    if "prompt" in item and "completion" in item:
        return TrainingExample(text("prompt"), text("completion")), "prompt_completion"
    if "input" in item and "output" in item:
        prompt = text("input")
        return TrainingExample(prompt, _join(prompt, text("output"))), "input_output"
    if "question" in item and "choices" in item and "answer" in item:
        choices = item["choices"]
        if not (
            isinstance(choices, dict)
            and choices
            and all(isinstance(k, str) and _LETTER.match(k) for k in choices)
            and all(isinstance(v, str) for v in choices.values())
        ):
            raise DatasetError(
                f"{where}['choices'] must be a non-empty mapping of single letters to strings, "
                f'e.g. {{"A": "...", "B": "..."}}'
            )
        answer = text("answer")
        if answer not in choices:
            raise DatasetError(
                f"{where}['answer'] = {answer!r} is not one of its choices {sorted(choices)}"
            )
        prompt = build_prompt(text("question"), choices, instruction)
        # The gold letter alone: multiple_choice parses the first letter it finds, so an answer
        # written as "B: a dog" could be read as "A".
        return TrainingExample(prompt, _join(prompt, answer)), "multiple_choice"
    if "question" in item and "answer" in item:
        prompt = text("question")
        return TrainingExample(prompt, _join(prompt, text("answer"))), "question_answer"
    raise DatasetError(f"{where} has keys {sorted(item)}; expected {_ACCEPTED}")


def _read(path: Path) -> Any:
    if not path.is_file():
        where = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DatasetError(f"training file {str(path)!r} {where}")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"training file {str(path)!r} is not UTF-8 text: {err}") from None
    except OSError as err:
        raise DatasetError(f"training file {str(path)!r} cannot be read: {err}") from None
    if path.suffix == ".jsonl":
        items = []
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetError(
                    f"training file {str(path)!r}: line {lineno} is not valid JSON ({err.msg}); "
                    "a .jsonl file holds one JSON item per line"
                ) from None
        return items
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"training file {str(path)!r} is not valid JSON (line {err.lineno}, column "
            f"{err.colno}: {err.msg}); expected {_FILES}"
        ) from None


def load_training_data(
    path: str | Path, split: str | None = None, *, instruction: str = DEFAULT_INSTRUCTION
) -> TrainingData:
    """Read and render one split of a training file (see the module docstring for formats).

    ``split`` picks a split of a file with splits (default: ``train`` when the file has one,
    else ``dev``); it must be ``None`` for a list or JSONL file. ``instruction`` is the first
    line of multiple-choice prompts, as in the ``multiple_choice`` utility. Raises
    :class:`DatasetError` naming the file, the split, the item and the key for any problem.
    """
    p = Path(path)
    if split is not None and split not in TRAIN_SPLITS:
        why = " (the test split is kept for the final report)" if split == "test" else ""
        raise DatasetError(
            f"cannot train on split {split!r}{why}; choose one of {', '.join(TRAIN_SPLITS)}"
        )
    data = _read(p)
    name = p.stem
    if isinstance(data, dict):
        present = [s for s in TRAIN_SPLITS if s in data]
        if split is None:
            if not present:
                raise DatasetError(
                    f"training file {str(p)!r} has neither a 'train' nor a 'dev' split (keys: "
                    f"{sorted(data)}); expected {_FILES}"
                )
            split = present[0]
        elif split not in data:
            raise DatasetError(
                f"training file {str(p)!r} has no {split!r} split (it has "
                f"{[k for k in data if isinstance(data[k], list)]})"
            )
        raw_name = data.get("dataset", name)
        name = raw_name if isinstance(raw_name, str) and raw_name else name
        items = data[split]
        if not isinstance(items, list):
            raise DatasetError(
                f"training file {str(p)!r}: {split!r} is a JSON {type(items).__name__}, expected "
                "a list of items"
            )
    elif isinstance(data, list):
        if split is not None:
            raise DatasetError(
                f"training file {str(p)!r} is a plain list of items without splits; "
                f"leave out the split (got {split!r})"
            )
        items = data
    else:
        raise DatasetError(
            f"training file {str(p)!r}: the top level is a JSON {type(data).__name__}; "
            f"expected {_FILES}"
        )
    if not items:
        what = f"the {split!r} split" if split is not None else "the file"
        raise DatasetError(f"training file {str(p)!r}: {what} holds no items")
    examples: list[TrainingExample] = []
    formats: Counter[str] = Counter()
    for i, item in enumerate(items):
        example, kind = render_item(item, _where(p, split, i), instruction=instruction)
        examples.append(example)
        formats[kind] += 1
    return TrainingData(
        name=name, path=p, split=split, examples=tuple(examples), formats=dict(formats)
    )
