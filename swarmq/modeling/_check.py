"""Validating an objective without loading a model (used when a search is created)."""

from __future__ import annotations

from swarmq.config import SearchConfig
from swarmq.objectives import load_dataset, utility_from_config

__all__ = ["check_objective"]


def check_objective(config: SearchConfig) -> None:
    """Fail early on a bad ``[objective]``: unknown utility, bad options, or a bad dataset.

    Raises :class:`swarmq.errors.UtilityError` or :class:`swarmq.errors.DatasetError`. Reads the
    dataset file but imports no model library, so it runs in the CLI before anything is written.
    """
    utility = utility_from_config(config.objective)
    dataset = load_dataset(config.objective.dataset, utility.example_keys)
    utility.check_dataset(dataset)
