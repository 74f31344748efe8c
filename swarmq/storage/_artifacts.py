"""Content-addressed storage of flat float32 arrays as safetensors files.

An artifact's name is the sha256 of its file, so writing the same array twice is a no-op,
concurrent writers cannot corrupt each other, and every read can check what it got. The store
is an abstract class so that an object store can stand behind the same interface; the local
folder store is the default (all workers of a distributed search mount the same folder).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from swarmq.errors import ArtifactError

__all__ = ["ArtifactStore", "LocalArtifactStore", "encode_vector", "hash_bytes"]

_HASH = re.compile(r"^[0-9a-f]{64}$")
_TENSOR = "vector"


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_vector(vector: np.ndarray) -> bytes:
    """Serialize a flat float32 vector to safetensors bytes (deterministic for equal arrays)."""
    arr = np.ascontiguousarray(vector, dtype=np.float32)
    if arr.ndim != 1:
        raise ArtifactError(f"an artifact is a flat vector, got shape {list(arr.shape)}")
    return st_save({_TENSOR: arr})


def decode_vector(data: bytes, digest: str) -> np.ndarray:
    try:
        tensors = st_load(data)
    except Exception as err:  # the safetensors parser raises several types
        raise ArtifactError(f"artifact {digest} is not a valid safetensors file: {err}") from None
    if set(tensors) != {_TENSOR}:
        raise ArtifactError(
            f"artifact {digest} holds tensors {sorted(tensors)}, expected [{_TENSOR!r}]"
        )
    return tensors[_TENSOR]


class ArtifactStore(ABC):
    """Where positions and velocities live, by content hash.

    Implementations must make :meth:`put_bytes` atomic (a reader never sees a partial object)
    and idempotent, and :meth:`get_bytes` must raise :class:`ArtifactError` for a missing object.
    """

    @abstractmethod
    def put_bytes(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest`` (its sha256) unless it is already there."""

    @abstractmethod
    def get_bytes(self, digest: str) -> bytes:
        """The stored bytes of ``digest``."""

    @abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether ``digest`` is stored."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages (no credentials)."""

    def put_vector(self, vector: np.ndarray) -> str:
        """Store a flat float32 vector; return its hash."""
        data = encode_vector(vector)
        digest = hash_bytes(data)
        self.put_bytes(digest, data)
        return digest

    def get_vector(self, digest: str) -> np.ndarray:
        """Read a vector and verify that its content still hashes to ``digest``."""
        _check_digest(digest)
        data = self.get_bytes(digest)
        actual = hash_bytes(data)
        if actual != digest:
            raise ArtifactError(
                f"artifact {digest} in {self.describe()} is corrupted: its content hashes to "
                f"{actual}; restore it from a backup or delete the search (swarmq delete SEARCH)"
            )
        return decode_vector(data, digest)


def _check_digest(digest: str) -> None:
    # Hashes become file names: anything else could escape the store's folder.
    if not isinstance(digest, str) or not _HASH.match(digest):
        raise ArtifactError(f"{digest!r} is not an artifact hash (64 lowercase hex characters)")


def _holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file holding exactly ``data`` (its size alone would let a
    corrupted copy of the right length stand for ever)."""
    try:
        if path.is_symlink() or path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


class LocalArtifactStore(ArtifactStore):
    """A folder: ``<root>/<hash[:2]>/<hash>.safetensors``, written atomically with fsync."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def describe(self) -> str:
        return str(self.root)

    def _path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / digest[:2] / f"{digest}.safetensors"

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def put_bytes(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        if _holds(path, data):
            return
        # Absent, or present with other content (a corrupted copy, a file swapped for a link):
        # the write below replaces it, so a later write of the same content repairs it.
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    # Durable before the database may reference it: a crash after the commit
                    # must never leave a row pointing at a file that was not on disk.
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise ArtifactError(
                f"cannot write artifact {digest} to {path.parent}: {err.strerror or err}; "
                "check that the artifact store is writable and has free space"
            ) from None

    def get_bytes(self, digest: str) -> bytes:
        path = self._path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(
                f"artifact {digest} is missing from the store {self.root}"
            ) from None
        except OSError as err:
            raise ArtifactError(f"cannot read artifact {digest} from {path}: {err}") from None
