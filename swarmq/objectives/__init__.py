"""Objectives (utility functions): what a swarm maximises, as plug-ins in a strict registry.

A utility is a :class:`Utility` subclass registered with :func:`register_utility`; it declares the
dataset keys it needs and scores a :class:`TextGenerator` on a list of examples. The built-in
utilities (``multiple_choice``, ``exact_match``) are registered when this package is imported.
Nothing here imports torch: the model side lives in :mod:`swarmq.modeling`.
"""

from __future__ import annotations

from swarmq.objectives._base import TextGenerator, Utility, UtilityOptions, UtilityResult
from swarmq.objectives._data import SPLITS, Dataset, load_dataset
from swarmq.objectives._registry import (
    available_utilities,
    build_utility,
    get_utility,
    register_utility,
    utility_from_config,
)

# Imported for their registration side effect (and re-exported for direct use).
from swarmq.objectives.exact_match import ExactMatch, answer_in_tail
from swarmq.objectives.multiple_choice import MultipleChoice, build_prompt, parse_choice

__all__ = [
    "SPLITS",
    "Dataset",
    "ExactMatch",
    "MultipleChoice",
    "TextGenerator",
    "Utility",
    "UtilityOptions",
    "UtilityResult",
    "answer_in_tail",
    "available_utilities",
    "build_prompt",
    "build_utility",
    "get_utility",
    "load_dataset",
    "parse_choice",
    "register_utility",
    "utility_from_config",
]
