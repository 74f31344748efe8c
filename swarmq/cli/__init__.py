"""The ``swarmq`` command line (``swarmq --help``).

``_commands`` defines the group and the core commands; each other module adds the commands of
one concern to it when imported here.
"""

import swarmq.cli._distributed  # (registers its commands)
import swarmq.cli._experts  # (registers its commands)
import swarmq.cli._report  # noqa: F401  (registers its commands)
from swarmq.cli import _export  # noqa: F401  (registers its commands)
from swarmq.cli._commands import main

__all__ = ["main"]
