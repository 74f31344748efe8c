"""``reward_model``: the mean reward of the model's responses, by a local reward model.

As the paper's reward-model objective: the model answers each prompt greedily (200 new tokens),
a reward model scores every (prompt, response) pair, each reward is mapped linearly from
``[reward_min, reward_max]`` to ``[0, 1]`` and clipped, and the utility is the mean. The paper's
"verbose" and "concise" variants average that with a length score: the response's length mapped
from ``[length_min, length_max]`` to ``[0, 1]`` (verbose) or to ``[1, 0]`` (concise), clipped.

The reward comes from a sequence-classification checkpoint (``model_path``) or from the user's
own function (``scorer = "file.py:function"``) taking ``(prompts, responses)`` and returning one
number per pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from swarmq.errors import UtilityError
from swarmq.objectives._base import (
    Dtype,
    ModelLoader,
    RespondingUtility,
    RewardInput,
    TextGenerator,
    UtilityOptions,
    UtilityResult,
    check_rewards,
    require_capability,
)
from swarmq.objectives._plugins import import_object, parse_spec
from swarmq.objectives._registry import register_utility

__all__ = ["RewardModel", "RewardScorer", "clip01", "length_score"]

_NAME = "reward_model"

#: ``(prompts, responses) -> rewards``: what a scorer plug-in provides.
RewardScorer = Callable[[list[str], list[str]], Sequence[float]]

_SCORER_FORM = "'path/to/file.py:function' or 'module:function'"
_SAMPLES = 3


def clip01(x: float) -> float:
    """``x`` clipped to ``[0, 1]``."""
    return min(1.0, max(0.0, x))


def length_score(
    length: float, low: float, high: float, mode: Literal["verbose", "concise"]
) -> float:
    """The paper's length term: ``(length - low) / (high - low)`` clipped (verbose), or one minus
    it (concise)."""
    x = clip01((length - low) / (high - low))
    return x if mode == "verbose" else 1.0 - x


def _length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


class RewardModelOptions(UtilityOptions):
    """Options of ``reward_model``."""

    model_path: str | None = Field(
        None,
        description="a sequence-classification model folder (AutoModelForSequenceClassification)",
    )
    scorer: str | None = Field(
        None,
        description=f"instead of a model, a function {_SCORER_FORM}: "
        "(prompts, responses) -> rewards",
    )
    reward_min: float | None = Field(
        None, description="reward mapped to 0 (with reward_max; unset: the raw reward is used)"
    )
    reward_max: float | None = Field(None, description="reward mapped to 1")
    mode: Literal["default", "verbose", "concise"] = Field(
        "default", description="'verbose'/'concise': average with a length score (the paper)"
    )
    length_unit: Literal["tokens", "words", "chars"] = Field(
        "tokens", description="how length is counted; 'tokens' are the reward model's tokens"
    )
    length_min: float = Field(10, ge=0, description="length mapped to 0 (paper: 10 tokens)")
    length_max: float = Field(201, gt=0, description="length mapped to 1 (paper: 201 tokens)")
    max_new_tokens: int = Field(200, ge=1, description="tokens generated per response")
    chat_template: bool = Field(
        False, description="send prompts through the base model's chat template (paper: no)"
    )
    label: int | None = Field(
        None, ge=0, description="for a classifier with several labels: the rewarded label's index"
    )
    input_format: RewardInput = Field(
        "auto", description="how the reward model reads a pair: its chat template or a text pair"
    )
    batch_size: int = Field(8, ge=1, description="pairs per reward-model forward pass")
    max_length: int = Field(2048, ge=8, description="reward-model input tokens kept (truncation)")
    device: str | None = Field(
        None, description="the reward model's device; default: the evaluated model's device"
    )
    dtype: Dtype = Field("auto", description="the reward model's dtype")

    @model_validator(mode="after")
    def _consistent(self) -> RewardModelOptions:
        if (self.model_path is None) == (self.scorer is None):
            raise ValueError(
                f"set exactly one of model_path (a reward model folder) and scorer ({_SCORER_FORM})"
            )
        if self.scorer is not None:
            try:
                spec = parse_spec(self.scorer, "scorer", _SCORER_FORM)
            except UtilityError as err:
                raise ValueError(str(err)) from None
            if spec.is_file and not Path(spec.target).expanduser().is_file():
                raise ValueError(f"the scorer file {spec.target!r} does not exist")
            if self.label is not None or self.input_format != "auto":
                raise ValueError("label and input_format apply to model_path, not to a scorer")
            if self.mode != "default" and self.length_unit == "tokens":
                raise ValueError(
                    "length_unit = 'tokens' counts the reward model's tokens, and a scorer has "
                    "none; use 'words' or 'chars'"
                )
        if (self.reward_min is None) != (self.reward_max is None):
            raise ValueError("set both reward_min and reward_max, or neither")
        if self.reward_min is not None and self.reward_max is not None:
            if not self.reward_min < self.reward_max:
                raise ValueError(
                    f"reward_min ({self.reward_min}) must be below reward_max ({self.reward_max})"
                )
        elif self.mode != "default":
            raise ValueError(
                f"mode = {self.mode!r} averages the reward with a length score in [0, 1], so the "
                "reward must be normalised too: set reward_min and reward_max"
            )
        if not self.length_min < self.length_max:
            raise ValueError(
                f"length_min ({self.length_min}) must be below length_max ({self.length_max})"
            )
        return self


@register_utility(_NAME)
class RewardModel(RespondingUtility):
    """Mean (normalised) reward of greedy responses; optional verbose/concise length term.

    Items: ``{"prompt": str}`` (the paper's ``rm.json``). Responses are stripped of surrounding
    whitespace before they are scored, as the reference code's generation does.
    """

    example_keys: ClassVar[tuple[str, ...]] = ("prompt",)
    Options = RewardModelOptions
    options: RewardModelOptions

    def _scorer(
        self, generator: TextGenerator
    ) -> tuple[RewardScorer, Callable[[list[str]], list[int]] | None]:
        o = self.options
        if o.scorer is not None:
            spec = parse_spec(o.scorer, "scorer", _SCORER_FORM)
            fn = import_object(spec, "reward scorer")
            if not callable(fn):
                raise UtilityError(
                    f"reward scorer {o.scorer!r} is a {type(fn).__name__}, not a function of "
                    "(prompts, responses)"
                )
            return fn, None
        assert o.model_path is not None  # the options' validator guarantees one of the two
        loader: ModelLoader = require_capability(
            generator, ModelLoader, _NAME, "is scored by the reward model in model_path"
        )
        model = loader.load_reward_classifier(o.model_path, o.dtype, o.device)

        def score(prompts: list[str], responses: list[str]) -> list[float]:
            return model.rewards(
                prompts,
                responses,
                label=o.label,
                input_format=o.input_format,
                batch_size=o.batch_size,
                max_length=o.max_length,
            )

        return score, model.count_tokens

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Generate a response per prompt, score the pairs, return the mean utility."""
        scorer, count_tokens = self._scorer(generator)
        return self.score_with(generator, scorer, examples, count_tokens=count_tokens)

    def score_with(
        self,
        generator: TextGenerator,
        scorer: RewardScorer,
        examples: Sequence[Mapping[str, Any]],
        *,
        count_tokens: Callable[[list[str]], list[int]] | None = None,
    ) -> UtilityResult:
        """:meth:`score` with a given reward function (and token counter for 'tokens')."""
        if not examples:
            raise UtilityError("reward_model: no examples to score")
        o = self.options
        prompts = [str(ex["prompt"]) for ex in examples]
        responses = self.responses(generator, prompts)
        source = f"reward scorer {o.scorer!r}" if o.scorer else f"reward model {o.model_path!r}"
        raw = check_rewards(scorer(list(prompts), list(responses)), len(prompts), source)
        metrics: dict[str, Any] = {"n": len(raw), "mean_reward": sum(raw) / len(raw)}
        values = list(raw)
        if o.reward_min is not None and o.reward_max is not None:
            span = o.reward_max - o.reward_min
            values = [clip01((r - o.reward_min) / span) for r in raw]
            metrics["mean_normalised_reward"] = sum(values) / len(values)
            metrics["clipped_low"] = sum(r < o.reward_min for r in raw)
            metrics["clipped_high"] = sum(r > o.reward_max for r in raw)
        if o.mode != "default":
            if o.length_unit == "tokens":
                if count_tokens is None:
                    raise UtilityError(
                        "reward_model: length_unit = 'tokens' needs the reward model's tokenizer"
                    )
                lengths = count_tokens(responses)
            else:
                lengths = [_length(r, o.length_unit) for r in responses]
            terms = [length_score(x, o.length_min, o.length_max, o.mode) for x in lengths]
            values = [(v + t) / 2 for v, t in zip(values, terms, strict=True)]
            metrics["mean_length"] = sum(lengths) / len(lengths)
            metrics["mean_length_score"] = sum(terms) / len(terms)
        metrics["samples"] = [
            {"prompt": p[:100], "response": r[:200], "reward": x}
            for p, r, x in list(zip(prompts, responses, raw, strict=True))[:_SAMPLES]
        ]
        # Per item: the response's (normalised, length-combined) reward, whose mean is the value.
        return UtilityResult(
            value=sum(values) / len(values), metrics=metrics, item_scores=tuple(values)
        )
