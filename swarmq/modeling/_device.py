"""Choosing the torch device a worker evaluates on."""

from __future__ import annotations

import gc
from typing import Any

from swarmq.errors import ModelError

__all__ = ["release_memory", "select_device", "torch_dtype"]


def select_device(spec: str = "auto") -> str:
    """Resolve a ``[base_model] device`` value to a torch device string.

    ``"auto"`` gives ``"cuda"`` when a CUDA GPU is usable, else ``"mps"`` (Apple silicon) when
    usable, else ``"cpu"``. An explicit device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``)
    is checked: asking for a GPU this machine does not have raises :class:`ModelError` instead of
    failing later inside the first generation.
    """
    import torch

    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ModelError(
            f"device {spec!r} is not a torch device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(
                f"device {spec!r} asks for CUDA, but no CUDA GPU is usable here; "
                "use 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= count:
            raise ModelError(
                f"device {spec!r} does not exist: this machine has {count} CUDA GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(
            f"device {spec!r} asks for MPS, which is not available here; use 'cpu' or 'auto'"
        )
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ModelError(
            f"device {spec!r} is not supported; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    return str(device)


def release_memory() -> None:
    """Collect garbage and return CUDA's cached blocks, after a model is dropped."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def torch_dtype(name: str) -> Any:
    """The torch dtype of a configured dtype name (``"float32"``, ``"bfloat16"``,
    ``"float16"``), or ``"auto"`` unchanged (transformers then takes the checkpoint's)."""
    if name == "auto":
        return "auto"
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not one of 'auto', {', '.join(map(repr, dtypes))}")
    return dtypes[name]
