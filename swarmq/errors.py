"""The errors swarmq raises on purpose.

Every error a user can cause derives from :class:`SwarmqError`; the CLI prints its message and
exits with status 2, without a traceback. Messages name the bad value and say what is accepted.
"""

from __future__ import annotations


class SwarmqError(Exception):
    """Base class of every error swarmq raises for bad input or a bad state."""


class ConfigError(SwarmqError):
    """A search configuration file is malformed or holds a bad value."""


class LayoutError(SwarmqError):
    """Expert weights cannot form one weight space (keys, shapes or dtypes differ)."""


class DatasetError(SwarmqError):
    """An objective's dataset file is missing or is not of the expected shape."""


class ArtifactError(SwarmqError):
    """An artifact is missing from the store or its content does not match its hash."""


class StorageError(SwarmqError):
    """The database cannot be used (unreachable, wrong schema version, failed transaction)."""


class NotFoundError(SwarmqError):
    """A search, particle or iteration named by the user does not exist."""


class UtilityError(SwarmqError):
    """A utility (objective) is unknown, badly configured, or returned an invalid value."""


class ModelError(SwarmqError):
    """A base model or adapter cannot be loaded."""


class NumericError(SwarmqError):
    """A weight, a swarm parameter or a computed position or velocity is not finite."""
