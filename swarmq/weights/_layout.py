"""The weight space: an ordered layout of tensors and the flat float32 vectors over it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from swarmq.errors import LayoutError

__all__ = ["Layout", "TensorSpec"]

# safetensors dtype names accepted in a layout, with their byte size.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a position: key, shape and safetensors dtype name (``F32``, ``BF16``...)."""

    key: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Layout:
    """An ordered, validated list of tensors; a position is a flat float32 vector over it.

    Keys are sorted, so two experts with the same tensors always give the same layout whatever
    order their files store them in. Arithmetic on positions is elementwise, so ``lora_A`` and
    ``lora_B`` are combined separately, as the algorithm requires.
    """

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        keys = [t.key for t in self.tensors]
        if keys != sorted(keys):
            raise LayoutError("layout keys must be sorted")
        if len(set(keys)) != len(keys):
            raise LayoutError("layout keys must be unique")
        if not self.tensors:
            raise LayoutError("a layout needs at least one tensor")
        for t in self.tensors:
            if t.dtype not in DTYPE_SIZES:
                raise LayoutError(
                    f"tensor {t.key!r} has dtype {t.dtype!r}; floating dtypes "
                    f"{sorted(DTYPE_SIZES)} are accepted"
                )

    @property
    def size(self) -> int:
        """Number of float32 elements of a flat position."""
        return sum(t.numel for t in self.tensors)

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.tensors]

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[tuple[int, ...], str]]) -> Layout:
        """Build a layout from ``{key: (shape, dtype)}`` in any order."""
        return cls(
            tuple(
                TensorSpec(k, tuple(int(s) for s in shapes[k][0]), shapes[k][1])
                for k in sorted(shapes)
            )
        )

    def to_json(self) -> str:
        """Compact JSON, as recorded in the database."""
        return json.dumps([[t.key, list(t.shape), t.dtype] for t in self.tensors])

    @classmethod
    def from_json(cls, text: str) -> Layout:
        data: Any = json.loads(text)
        return cls(
            tuple(TensorSpec(str(k), tuple(int(s) for s in shape), str(d)) for k, shape, d in data)
        )

    def first_difference(self, other: Layout) -> str | None:
        """Describe the first key where two layouts differ, or ``None`` when they are equal."""
        mine = {t.key: t for t in self.tensors}
        theirs = {t.key: t for t in other.tensors}
        for key in sorted(set(mine) | set(theirs)):
            a, b = mine.get(key), theirs.get(key)
            if a is None:
                return f"key {key!r} is missing from the first layout"
            if b is None:
                return f"key {key!r} is missing from the second layout"
            if a.shape != b.shape:
                return (
                    f"key {key!r} has shape {list(a.shape)} in one and {list(b.shape)} in the other"
                )
            if a.dtype != b.dtype:
                return f"key {key!r} has dtype {a.dtype} in one and {b.dtype} in the other"
        return None

    def flatten(self, tensors: Mapping[str, Any]) -> np.ndarray:
        """Concatenate tensors (numpy arrays, or anything ``np.asarray`` takes) in layout order."""
        out = np.empty(self.size, dtype=np.float32)
        offset = 0
        for t in self.tensors:
            if t.key not in tensors:
                raise LayoutError(f"tensor {t.key!r} of the layout is missing")
            arr = np.asarray(tensors[t.key], dtype=np.float32)
            if tuple(arr.shape) != t.shape:
                raise LayoutError(
                    f"tensor {t.key!r} has shape {list(arr.shape)}, layout says {list(t.shape)}"
                )
            out[offset : offset + t.numel] = arr.reshape(-1)
            offset += t.numel
        return out

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector into float32 tensors keyed as the layout (views, no copy)."""
        vec = np.asarray(vector)
        if vec.dtype != np.float32 or vec.ndim != 1 or vec.shape[0] != self.size:
            raise LayoutError(
                f"a position of this layout is a float32 vector of {self.size} elements, "
                f"got {vec.dtype} of shape {list(vec.shape)}"
            )
        out: dict[str, np.ndarray] = {}
        offset = 0
        for t in self.tensors:
            out[t.key] = vec[offset : offset + t.numel].reshape(t.shape)
            offset += t.numel
        return out
