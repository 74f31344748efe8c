"""Writing a position back to disk as a peft adapter (or a plain safetensors file)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from swarmq.errors import LayoutError, SwarmqError
from swarmq.weights._io import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from swarmq.weights._layout import Layout

__all__ = ["EXPORT_MARKER", "PLAIN_WEIGHTS", "export_adapter", "state_dict_from_vector"]

PLAIN_WEIGHTS = "model.safetensors"
# Metadata key stamped into every exported weights file: it is how a later export recognises a
# folder it may overwrite, so an expert's own folder is never clobbered by mistake.
EXPORT_MARKER = "swarmq.export"
_EXPORT_FILES = {ADAPTER_WEIGHTS, ADAPTER_CONFIG, PLAIN_WEIGHTS}
_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def _as_position(layout: Layout, vector: np.ndarray) -> np.ndarray:
    vec = np.asarray(vector)
    if vec.ndim != 1 or vec.shape[0] != layout.size or not np.issubdtype(vec.dtype, np.floating):
        raise LayoutError(
            f"a position of this layout is a floating vector of {layout.size} elements, "
            f"got {vec.dtype} of shape {list(vec.shape)}"
        )
    bad = int(vec.size - np.count_nonzero(np.isfinite(vec)))
    if bad:
        raise SwarmqError(
            f"the position holds {bad} non-finite value(s) (NaN or inf) out of {vec.size}; "
            "it cannot be exported: lower the step length or check the utility"
        )
    return vec.astype(np.float32, copy=False)


def state_dict_from_vector(layout: Layout, vector: np.ndarray) -> dict[str, np.ndarray]:
    """Split a position into tensors cast to their layout dtype (fresh arrays, not views).

    F64/F32/F16 tensors come back in that numpy dtype; BF16 ones stay float32, because numpy
    has no bfloat16 (:func:`export_adapter` rounds them when writing). A value that overflows
    its dtype (e.g. above 65504 in F16) is refused rather than silently written as inf.
    """
    tensors = layout.unflatten(_as_position(layout, vector))
    out: dict[str, np.ndarray] = {}
    for spec in layout.tensors:
        # An F16 overflow becomes inf here and is reported just below, not as a numpy warning.
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(
                tensors[spec.key], dtype=_NUMPY_DTYPES.get(spec.dtype, np.float32)
            )
        if spec.dtype == "F16":
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise SwarmqError(
                    f"tensor {spec.key!r}: {bad} value(s) overflow F16 (|x| > 65504); "
                    "the position cannot be stored in the experts' dtype"
                )
        out[spec.key] = arr
    return out


def _is_previous_export(folder: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    weights = names & {ADAPTER_WEIGHTS, PLAIN_WEIGHTS}
    if not names <= _EXPORT_FILES or not weights:
        return False
    try:
        for name in weights:
            with safe_open(str(folder / name), framework="np") as f:
                if (f.metadata() or {}).get(EXPORT_MARKER) is None:
                    return False
    except (SafetensorError, OSError):
        return False
    return True


def _bfloat16_bytes(arr: np.ndarray) -> bytes:
    """Little-endian bfloat16 bytes of a float32 array, rounded to nearest even like torch."""
    bits = np.ascontiguousarray(arr, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def _write_safetensors(
    path: Path, blobs: dict[str, tuple[str, tuple[int, ...], bytes]], metadata: dict[str, str]
) -> None:
    """Write a safetensors file whose bytes depend only on its content.

    The safetensors library writes its metadata in hash-map order, which changes from one
    process to the next, so two exports of the same position differed. Here the header is
    JSON with sorted keys, tensors are laid out in key order, and the header is padded with
    spaces to a multiple of 8 bytes, as the format asks.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for key in sorted(blobs):
        dtype, shape, data = blobs[key]
        header[key] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for key in sorted(blobs):
            f.write(blobs[key][2])


def _replace_atomically(target: Path, write: Any) -> None:
    # A hidden temp file in the same folder, so os.replace is a rename on one filesystem and a
    # crash never leaves a half-written file under the real name.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def export_adapter(
    layout: Layout,
    vector: np.ndarray,
    out_dir: Path,
    adapter_config: dict[str, Any] | None,
    *,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a position to ``out_dir`` and return ``out_dir``.

    With an ``adapter_config`` the folder holds ``adapter_model.safetensors`` and
    ``adapter_config.json``, so ``PeftModel.from_pretrained(base, out_dir)`` loads it. With
    ``adapter_config=None`` (a plain pool of full weights) it holds ``model.safetensors`` only.
    Each tensor is cast back to its layout dtype (BF16 through torch). ``metadata`` is added to
    the safetensors header. A non-empty ``out_dir`` that is not an earlier export is refused
    unless ``overwrite=True`` (``--overwrite`` on the command line).
    """
    out_dir = Path(out_dir)
    tensors = state_dict_from_vector(layout, vector)
    header: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SwarmqError(
                f"safetensors metadata must map str to str, got {key!r}: {value!r}; "
                "convert the value with str() or json.dumps()"
            )
        header[key] = value
    # transformers and peft refuse a safetensors file whose "format" is not a known framework.
    header.setdefault("format", "pt")
    header[EXPORT_MARKER] = "1"

    if out_dir.exists() and not out_dir.is_dir():
        raise LayoutError(f"export target {out_dir} is a file; give a folder path")
    if (
        out_dir.is_dir()
        and any(not p.name.startswith(".") for p in out_dir.iterdir())
        and not overwrite
        and not _is_previous_export(out_dir)
    ):
        raise LayoutError(
            f"export target {out_dir} is not empty and is not an earlier swarmq export; "
            "choose an empty folder or pass --overwrite"
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    weights_name = ADAPTER_WEIGHTS if adapter_config is not None else PLAIN_WEIGHTS
    blobs: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for spec in layout.tensors:
        arr = tensors[spec.key]
        if spec.dtype == "BF16":
            data = _bfloat16_bytes(arr)
        else:
            data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        blobs[spec.key] = (spec.dtype, tuple(arr.shape), data)
    _replace_atomically(out_dir / weights_name, lambda p: _write_safetensors(p, blobs, header))
    if adapter_config is not None:
        text = json.dumps(adapter_config, indent=2, sort_keys=True) + "\n"
        _replace_atomically(out_dir / ADAPTER_CONFIG, lambda p: p.write_text(text, "utf-8"))
    # Files of the other kind left by an earlier export would make the folder ambiguous.
    stale = {ADAPTER_WEIGHTS, ADAPTER_CONFIG} if adapter_config is None else {PLAIN_WEIGHTS}
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    return out_dir
