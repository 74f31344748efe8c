"""Loading an objective's dataset file: ``{"dataset": NAME, "dev": [...], "test": [...]}``.

The format is the one of the paper's ``data/eval/*.json`` files. Any file of that shape loads,
whatever its name; the keys an item must carry come from the utility (``Utility.example_keys``).
Every problem is reported with the file, the split, the item index and the key, so a user can
find the bad line without reading a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmq.errors import DatasetError

__all__ = ["SPLITS", "Dataset", "check_items", "load_dataset"]

SPLITS = ("dev", "test")

_TOP_LEVEL = '{"dataset": NAME, "dev": [ITEM, ...], "test": [ITEM, ...]}'
_LETTER = re.compile(r"^[A-Za-z]$")


@dataclass(frozen=True)
class Dataset:
    """One objective's data: the dev split (what a search optimises) and the test split (report).

    ``extra`` holds any other top-level entries of the file (the paper's files may carry e.g. an
    ``icl_prompt``), untouched.
    """

    name: str
    path: Path
    dev: tuple[dict[str, Any], ...]
    test: tuple[dict[str, Any], ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> tuple[dict[str, Any], ...]:
        """The items of split ``name`` (``"dev"`` or ``"test"``)."""
        if name == "dev":
            return self.dev
        if name == "test":
            return self.test
        raise DatasetError(f"unknown split {name!r}; the splits are {', '.join(SPLITS)}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_answer(value: Any) -> bool:
    # Exact-match sets may store numbers as JSON numbers; they compare as their text.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_choices(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) > 0
        and all(isinstance(k, str) and _LETTER.match(k) for k in value)
        and all(isinstance(v, str) for v in value.values())
    )


# Shape checks for the keys whose meaning is fixed by the paper's formats; any other required key
# only has to be present.
_SHAPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "question": (_is_text, "a string"),
    "prompt": (_is_text, "a string"),
    "answer": (_is_answer, "a string (or an integer)"),
    "choices": (
        _is_choices,
        'a non-empty mapping of single letters to strings, e.g. {"A": "...", "B": "..."}',
    ),
}


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def load_dataset(path: str | Path, required_keys: Iterable[str] = ()) -> Dataset:
    """Read and validate a dataset file; every item of both splits must carry ``required_keys``.

    Raises :class:`DatasetError` for a missing or unreadable file, text that is not JSON, a
    top-level value of the wrong shape, an empty split, an item that is not an object, an item
    missing a required key, or a known key (``question``, ``prompt``, ``answer``, ``choices``)
    of the wrong type.
    """
    p = Path(path)
    keys = tuple(dict.fromkeys(required_keys))
    if not p.is_file():
        where = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise DatasetError(f"dataset file {str(p)!r} {where}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DatasetError(f"dataset file {str(p)!r} is not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"dataset file {str(p)!r} is not valid JSON (line {err.lineno}, column {err.colno}: "
            f"{err.msg}); expected {_TOP_LEVEL}"
        ) from None
    except OSError as err:
        raise DatasetError(f"dataset file {str(p)!r} cannot be read: {err}") from None

    if not isinstance(data, dict):
        raise DatasetError(
            f"dataset file {str(p)!r}: the top level is a JSON {_kind(data)}; expected {_TOP_LEVEL}"
        )
    name = data.get("dataset", p.stem)
    if not isinstance(name, str) or not name:
        raise DatasetError(
            f"dataset file {str(p)!r}: 'dataset' must be a non-empty string (the dataset's name), "
            f"got {name!r}; expected {_TOP_LEVEL}"
        )
    splits: dict[str, tuple[dict[str, Any], ...]] = {}
    for split in SPLITS:
        splits[split] = _check_split(p, split, data.get(split, None), split in data, keys)
    extra = {k: v for k, v in data.items() if k not in ("dataset", *SPLITS)}
    return Dataset(name=name, path=p, dev=splits["dev"], test=splits["test"], extra=extra)


def _check_split(
    path: Path, split: str, items: Any, present: bool, keys: tuple[str, ...]
) -> tuple[dict[str, Any], ...]:
    item_shape = "{" + ", ".join(f'"{k}": ...' for k in keys) + "}" if keys else "{...}"
    if not present:
        raise DatasetError(
            f"dataset file {str(path)!r}: the {split!r} split is missing; expected {_TOP_LEVEL}"
        )
    if not isinstance(items, list):
        raise DatasetError(
            f"dataset file {str(path)!r}: {split!r} is a JSON {_kind(items)}, expected a list of "
            f"items {item_shape}"
        )
    if not items:
        raise DatasetError(f"dataset file {str(path)!r}: the {split!r} split is empty")
    check_items(path, split, enumerate(items), keys)
    return tuple(items)


def check_items(
    path: Path, split: str, items: Iterable[tuple[int, Any]], keys: Iterable[str]
) -> None:
    """Check ``(index, item)`` pairs of ``split``: each an object with ``keys`` of the right shape.

    The indices are those of the file, so a utility checking a subset of a split (e.g. one task
    of a multi-task file) still names the right item. Raises :class:`DatasetError`.
    """
    keys = tuple(keys)
    item_shape = "{" + ", ".join(f'"{k}": ...' for k in keys) + "}" if keys else "{...}"
    for i, item in items:
        if not isinstance(item, dict):
            raise DatasetError(
                f"dataset file {str(path)!r}: {split}[{i}] is a JSON {_kind(item)}, expected an "
                f"object {item_shape}"
            )
        for key in keys:
            if key not in item:
                raise DatasetError(
                    f"dataset file {str(path)!r}: {split}[{i}] has no key {key!r} (it has "
                    f"{sorted(item)}); every item must be {item_shape}"
                )
            shape = _SHAPES.get(key)
            if shape is not None and not shape[0](item[key]):
                raise DatasetError(
                    f"dataset file {str(path)!r}: {split}[{i}][{key!r}] = {_short(item[key])}: "
                    f"expected {shape[1]}"
                )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
