"""Objectives (utility functions): what a swarm maximises, as plug-ins in a strict registry.

A utility is a :class:`Utility` subclass registered with :func:`register_utility`; it declares the
dataset keys it needs and scores a :class:`TextGenerator` on a list of examples. The built-in
utilities (``multiple_choice``, ``exact_match``, ``abstain_qa``, ``multitask``, ``reward_model``,
``human_interest``) are registered when this package is imported; a user's own utility is one
Python file named as ``path/to/file.py:ClassName``. Nothing here imports torch when the package
is imported: the evaluated model lives in :mod:`swarmq.modeling`, and judge and reward models are
loaded on first use.
"""

from __future__ import annotations

from swarmq.objectives._base import (
    ChatGenerator,
    Dtype,
    LikelihoodScorer,
    ModelLoader,
    RewardClassifier,
    RewardInput,
    TextGenerator,
    TokenLikelihoodScorer,
    Utility,
    UtilityOptions,
    UtilityResult,
    check_rewards,
    require_capability,
)
from swarmq.objectives._data import SPLITS, Dataset, load_dataset
from swarmq.objectives._registry import (
    available_utilities,
    build_utility,
    get_utility,
    load_plugin_utility,
    register_utility,
    utility_from_config,
)

# Imported for their registration side effect (and re-exported for direct use).
from swarmq.objectives.abstain_qa import AbstainQA, effective_reliability
from swarmq.objectives.exact_match import ExactMatch, answer_in_output, answer_in_tail
from swarmq.objectives.human_interest import HumanInterest, parse_rating
from swarmq.objectives.multiple_choice import (
    MultipleChoice,
    OptionScore,
    build_prompt,
    option_probabilities,
    parse_choice,
)
from swarmq.objectives.multitask import Multitask, harmonic_mean, merge_task_files
from swarmq.objectives.reward_model import RewardModel

__all__ = [
    "SPLITS",
    "AbstainQA",
    "ChatGenerator",
    "Dataset",
    "Dtype",
    "ExactMatch",
    "HumanInterest",
    "LikelihoodScorer",
    "ModelLoader",
    "MultipleChoice",
    "Multitask",
    "OptionScore",
    "RewardClassifier",
    "RewardInput",
    "RewardModel",
    "TextGenerator",
    "TokenLikelihoodScorer",
    "Utility",
    "UtilityOptions",
    "UtilityResult",
    "answer_in_output",
    "answer_in_tail",
    "available_utilities",
    "build_prompt",
    "build_utility",
    "check_rewards",
    "effective_reliability",
    "get_utility",
    "harmonic_mean",
    "load_dataset",
    "load_plugin_utility",
    "merge_task_files",
    "option_probabilities",
    "parse_choice",
    "parse_rating",
    "register_utility",
    "require_capability",
    "utility_from_config",
]
