"""The ``swarmq`` command line (``swarmq --help``).

``_commands`` defines the group and the core commands; each other module adds the commands of
one concern to it when imported here.
"""

from swarmq.cli import _export  # noqa: F401  (registers its commands)
from swarmq.cli._commands import main

__all__ = ["main"]
