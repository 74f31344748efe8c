"""A compact binary form of per-item scores, stored in a column of each evaluation row.

Scores that are all 0 or 1 (an accuracy: the common case) are packed one bit per item: 1,000
items take 125 bytes plus a 5-byte header, so 1,000 items by 10,000 evaluations stay near 1.3 MB.
Any other scores are stored as little-endian float64, exactly (8 bytes per item). A column rather
than an artifact: the report and the bootstrap read them from the database alone, and a few
hundred bytes per row are cheaper than a file each.

Layout: one tag byte (``b"b"`` bits, ``b"f"`` float64), the item count as a little-endian
uint32, then the payload.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from swarmq.errors import SwarmqError

__all__ = ["decode_item_scores", "encode_item_scores"]

_HEADER = struct.Struct("<cI")


def encode_item_scores(scores: Sequence[float] | np.ndarray) -> bytes:
    """The compact form of ``scores`` (finite numbers; see the module docstring)."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise SwarmqError("item scores must be finite numbers")
    if np.all((values == 0.0) | (values == 1.0)):
        return _HEADER.pack(b"b", values.size) + np.packbits(values.astype(np.uint8)).tobytes()
    return _HEADER.pack(b"f", values.size) + values.astype("<f8").tobytes()


def decode_item_scores(blob: bytes) -> np.ndarray:
    """The float64 scores of a blob written by :func:`encode_item_scores`."""
    data = bytes(blob)
    if len(data) < _HEADER.size:
        raise SwarmqError(f"item scores record of {len(data)} bytes is too short")
    tag, n = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if tag == b"b" and len(payload) == (n + 7) // 8:
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=n)
        return bits.astype(np.float64)
    if tag == b"f" and len(payload) == 8 * n:
        return np.frombuffer(payload, dtype="<f8").astype(np.float64)
    raise SwarmqError(
        f"item scores record is corrupted (tag {tag!r}, {n} items, {len(payload)} bytes)"
    )
