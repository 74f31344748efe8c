"""What the audit reads: verified vectors by hash, and the recorded particle states.

:class:`VerifiedVectors` reads each artifact once, checks its sha256, keeps recent vectors and
reads ahead on two threads for large ones; :func:`iter_states` streams the particle states one
iteration at a time. The checks themselves are in :mod:`swarmq.reporting._audit`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from swarmq.errors import ArtifactError
from swarmq.reporting._columns import STATE_COLUMNS
from swarmq.storage import (
    ArtifactStore,
    Database,
    ParticleStateRow,
    decode_vector,
    encode_vector,
    hash_bytes,
)

__all__ = ["AuditState", "Evaluations", "Records", "VerifiedVectors", "iter_states"]


# (stored bytes or None, their sha256 or None, why they could not be read or None)
_Loaded = tuple[bytes | None, str | None, str | None]


class VerifiedVectors:
    """Verified vectors by hash: each artifact is read and hashed once, then kept (LRU, bytes).

    Files about to be checked are announced with :meth:`expect` and read and hashed ahead on
    two threads (file reads and sha256 release the GIL), while the caller recomputes updates;
    for small vectors the threads would cost more than they save, so reads stay inline.
    """

    def __init__(self, store: ArtifactStore, budget: int, vector_bytes: int) -> None:
        self.store = store
        self.budget = budget
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.size = 0
        self.verified: set[str] = set()
        # Hashes whose values were checked for NaN and infinity (each is reported once).
        self.finite_checked: set[str] = set()
        self.reads = 0
        self.bytes = 0
        self._headers: dict[int, bytes] = {}
        self._pool = (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="swarmq-audit")
            if vector_bytes >= 256 * 1024
            else None
        )
        # Read-ahead holds at most ~256 MiB of file contents.
        self._window = max(2, min(16, (256 * 2**20) // max(1, vector_bytes)))
        self._ahead: dict[str, Future[_Loaded]] = {}
        self._queue: deque[str] = deque()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _keep(self, digest: str, vector: np.ndarray) -> None:
        if digest in self.cache:
            self.cache.move_to_end(digest)
            return
        self.cache[digest] = vector
        self.size += vector.nbytes
        while self.size > self.budget and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.size -= old.nbytes

    def _load(self, digest: str) -> _Loaded:
        try:
            data = self.store.get_bytes(digest)
        except ArtifactError as err:
            return None, None, str(err)
        return data, hash_bytes(data), None

    def expect(self, digests: Iterable[str | None]) -> None:
        """Announce, in order of use, files that :meth:`get` or :meth:`confirm` will need."""
        if self._pool is None:
            return
        for d in digests:
            if d is not None and d not in self.verified and d not in self._ahead:
                self._queue.append(d)
        self._fill()

    def _fill(self) -> None:
        assert self._pool is not None
        while self._queue and len(self._ahead) < self._window:
            d = self._queue.popleft()
            if d not in self._ahead and d not in self.verified:
                self._ahead[d] = self._pool.submit(self._load, d)

    def _fetch(self, digest: str) -> _Loaded:
        future = self._ahead.pop(digest, None)
        loaded = self._load(digest) if future is None else future.result()
        if self._pool is not None:
            self._fill()
        if loaded[0] is not None:
            self.reads += 1
            self.bytes += len(loaded[0])
        return loaded

    def get(self, digest: str) -> np.ndarray:
        """The vector stored under ``digest``; raises :class:`ArtifactError` if it is bad."""
        vector = self.cache.get(digest)
        if vector is not None:
            self.cache.move_to_end(digest)
            return vector
        data, actual, error = self._fetch(digest)
        if data is None:
            raise ArtifactError(error)
        if actual != digest:
            raise ArtifactError(f"its content hashes to {actual}")
        vector = decode_vector(data, digest)
        self.verified.add(digest)
        self._keep(digest, vector)
        return vector

    def _header(self, size: int) -> bytes:
        # The safetensors header of a flat float32 vector depends on its length only.
        header = self._headers.get(size)
        if header is None:
            encoded = encode_vector(np.zeros(size, dtype=np.float32))
            header = encoded[: 8 + int.from_bytes(encoded[:8], "little")]
            self._headers[size] = header
        return header

    def _holds(self, data: bytes, vector: np.ndarray) -> bool:
        """Whether ``data`` is exactly ``encode_vector(vector)``, without serialising it."""
        header = self._header(vector.size)
        if len(data) != len(header) + vector.nbytes or not data.startswith(header):
            return False
        stored = np.frombuffer(data, dtype=np.uint32, offset=len(header))
        # Bit patterns, not values: -0.0 and 0.0 (or two NaNs) are different artifacts.
        return bool(np.array_equal(stored, vector.view(np.uint32)))

    def confirm(self, digest: str | None, vector: np.ndarray) -> tuple[str, str | None]:
        """Check a recomputed vector against the artifact the record names.

        Returns ``(recomputed hash, problem with the stored file or None)``. When the stored
        file hashes to ``digest`` and holds exactly this vector, the recomputed hash is
        ``digest`` and nothing is serialised; otherwise the vector is encoded and hashed to say
        which of the record or the file is wrong.
        """
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        if digest is not None and digest in self.verified:
            cached = self.cache.get(digest)
            if cached is not None and np.array_equal(
                cached.view(np.uint32), vector.view(np.uint32)
            ):
                self._keep(digest, vector)
                return digest, None
        elif digest is not None:
            data, actual, error = self._fetch(digest)
            if data is not None and actual == digest and self._holds(data, vector):
                self.verified.add(digest)
                self._keep(digest, vector)
                return digest, None
            computed = hash_bytes(encode_vector(vector))
            if computed != digest:
                return computed, None  # the record names another vector: reported as such
            if data is None:
                return computed, error
            return computed, f"its content hashes to {actual}"
        return hash_bytes(encode_vector(vector)), None


@dataclass(frozen=True)
class Records:
    """The global best and worst an update read (an asynchronous application's)."""

    best_hash: str | None
    worst_hash: str | None


# (iteration, particle, split) -> (status, utility, position hash)
Evaluations = dict[tuple[int, int, str], tuple[str, float | None, str]]


@dataclass(frozen=True)
class AuditState:
    iteration: int
    particle: int
    position_hash: str
    velocity_hash: str | None
    restarted: bool
    update: dict[str, Any] | None
    utility: float | None
    evaluated: bool | None
    best_hash: str | None
    best_utility: float | None
    best_iteration: int | None


def iter_states(db: Database, search_id: str, last: int, n: int) -> Iterator[list[AuditState]]:
    """The states of one iteration at a time, in order; read in batches of about 20,000 rows
    so that memory stays bounded for long searches."""
    step = max(1, 20_000 // max(1, n))
    for start in range(0, last + 1, step):
        with db.session() as s:
            rows = s.execute(
                select(*STATE_COLUMNS)
                .where(
                    ParticleStateRow.search_id == search_id,
                    ParticleStateRow.iteration >= start,
                    ParticleStateRow.iteration < start + step,
                )
                .order_by(ParticleStateRow.iteration, ParticleStateRow.particle)
            ).all()
        batch: dict[int, list[AuditState]] = {}
        for row in rows:
            st = AuditState(**row._asdict())
            batch.setdefault(st.iteration, []).append(st)
        for t in range(start, min(start + step, last + 1)):
            yield batch.get(t, [])
