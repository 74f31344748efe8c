"""The ``swarmq`` command line (``swarmq --help``)."""

from swarmq.cli._commands import main

__all__ = ["main"]
