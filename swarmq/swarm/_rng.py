"""Random streams keyed by (seed, purpose, iteration, particle).

Every random number of a search comes from a generator derived from the search seed and the
place it is used, never from a shared sequential stream. A replay after a crash, or an
evaluation order chosen by a busy queue, therefore draws exactly the same numbers.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["Stream", "generator"]


class Stream(IntEnum):
    """What a random stream is used for; part of the key, so streams never overlap."""

    EXPAND = 1
    VELOCITY = 2
    UPDATE = 3
    DROPOUT_ITERATION = 4
    DROPOUT_PARTICLE = 5


def generator(
    seed: int, stream: Stream, iteration: int = 0, particle: int = 0
) -> np.random.Generator:
    """A PCG64 generator for one (seed, stream, iteration, particle) key."""
    seq = np.random.SeedSequence(entropy=seed, spawn_key=(int(stream), iteration, particle))
    return np.random.Generator(np.random.PCG64(seq))
