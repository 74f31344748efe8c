"""``human_interest``: the mean 1-10 rating a judge LLM gives the model's responses.

As the paper's human-interest objective: the model answers each topic prompt greedily through
its chat template (512 new tokens); a judge reads the instruction and the response with the
paper's rating prompt and is asked to start its reply with ``Rating: X/10``; the utility is the
mean rating. The paper's judge is a hosted model; here it is a local causal LM (``judge_path``),
run greedily on the evaluated model's device.

A judge reply with no rating in 1..10 is never scored silently. ``unrated = "exclude"``
(default) leaves it out of the mean; ``unrated = "minimum"`` scores it 1, as the reference code
does. Either way the count is in the metrics, and the evaluation fails when more than
``max_unrated_fraction`` of the replies are unrated, or when none is rated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from swarmq.errors import UtilityError
from swarmq.objectives._base import (
    Dtype,
    ModelLoader,
    RespondingUtility,
    TextGenerator,
    UtilityOptions,
    UtilityResult,
    complete,
    require_capability,
)
from swarmq.objectives._registry import register_utility

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "HumanInterest", "parse_rating"]

_NAME = "human_interest"

# The reference code's rating prompt. Its source splits the string literal with a backslash
# inside the quotes, which leaves a stray " + " and indentation in the text sent to the judge;
# that accident is left out here.
DEFAULT_JUDGE_TEMPLATE = (
    "For the following instruction and response, please rate the response on a scale of 1 to "
    '10, where 1 is the worst and 10 is the best. Please respond with "Rating: ?/10" first '
    "and then provide your reason.\n\nInstruction: {instruction}\n\nResponse: {response}"
)

_RATING = re.compile(r"Rating:\s*(\d+(?:\.\d+)?)\s*/\s*10")
_SAMPLES = 3


def parse_rating(reply: str) -> float | None:
    """The first ``Rating: X/10`` of a judge reply, if X is in 1..10 (decimals allowed).

    ``None`` when there is no such rating, or it is out of range (0/10, 11/10).
    """
    found = _RATING.search(reply)
    if found is None:
        return None
    value = float(found.group(1))
    return value if 1.0 <= value <= 10.0 else None


class HumanInterestOptions(UtilityOptions):
    """Options of ``human_interest``."""

    judge_path: str = Field(min_length=1, description="the judge: a causal LM folder (or hub id)")
    judge_template: str = Field(
        DEFAULT_JUDGE_TEMPLATE,
        description="the rating prompt, a str.format template with {instruction} and {response}",
    )
    judge_max_new_tokens: int = Field(20, ge=1, description="tokens the judge generates")
    judge_chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="send the rating prompt through the judge's chat template"
    )
    judge_batch_size: int = Field(4, ge=1, description="rating prompts per judge batch")
    max_new_tokens: int = Field(512, ge=1, description="tokens generated per response")
    chat_template: bool = Field(
        True, description="send topic prompts through the base model's chat template (paper: yes)"
    )
    unrated: Literal["exclude", "minimum"] = Field(
        "exclude", description="an unrated reply: left out of the mean, or scored 1 (the paper)"
    )
    max_unrated_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="fail when a larger share of judge replies is unrated"
    )
    device: str | None = Field(
        None, description="the judge's device; default: the evaluated model's device"
    )
    dtype: Dtype = Field("auto", description="the judge's dtype")

    @field_validator("judge_template")
    @classmethod
    def _fields(cls, value: str) -> str:
        try:
            value.format(instruction="", response="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                "must be a str.format template with the fields {instruction} and {response} "
                f"(write {{{{ and }}}} for literal braces): {type(err).__name__}: {err}"
            ) from None
        missing = [f for f in ("{instruction}", "{response}") if f not in value]
        if missing:
            raise ValueError(f"must contain {' and '.join(missing)}")
        return value


@register_utility(_NAME)
class HumanInterest(RespondingUtility):
    """Mean judge rating (1-10) of greedy responses to topic prompts.

    Items: ``{"prompt": str}`` (the paper's ``human_*.json``). Metrics hold the counts of rated
    and unrated replies, how unrated replies were scored, and a few unrated judge replies.
    """

    example_keys: ClassVar[tuple[str, ...]] = ("prompt",)
    Options = HumanInterestOptions
    options: HumanInterestOptions

    def judge(self, generator: TextGenerator) -> TextGenerator:
        """The judge LLM (loaded on first use, then cached by the process)."""
        o = self.options
        loader: ModelLoader = require_capability(
            generator, ModelLoader, _NAME, "is rated by the judge model in judge_path"
        )
        return loader.load_judge(o.judge_path, o.dtype, o.device, o.judge_batch_size)

    def _ask(self, judge: TextGenerator, prompts: list[str]) -> list[str]:
        mode = self.options.judge_chat_template
        use_chat = mode == "always" or (
            mode == "auto" and bool(getattr(judge, "has_chat_template", False))
        )
        why = "is set to judge_chat_template = 'always'"
        n = self.options.judge_max_new_tokens
        return complete(judge, prompts, n, chat=use_chat, utility=_NAME, why=why, who="judge")

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Generate a response per prompt, have the judge rate each, return the mean rating."""
        return self.score_with_judge(generator, self.judge(generator), examples)

    def score_with_judge(
        self,
        generator: TextGenerator,
        judge: TextGenerator,
        examples: Sequence[Mapping[str, Any]],
    ) -> UtilityResult:
        """:meth:`score` with a given judge (any :class:`TextGenerator`)."""
        if not examples:
            raise UtilityError("human_interest: no examples to score")
        o = self.options
        prompts = [str(ex["prompt"]) for ex in examples]
        responses = self.responses(generator, prompts)
        asks = [
            o.judge_template.format(instruction=p, response=r)
            for p, r in zip(prompts, responses, strict=True)
        ]
        replies = self._ask(judge, asks)
        ratings = [parse_rating(r) for r in replies]
        rated = [x for x in ratings if x is not None]
        n, unrated = len(ratings), sum(x is None for x in ratings)
        unrated_samples = [r[:200] for r, x in zip(replies, ratings, strict=True) if x is None][
            :_SAMPLES
        ]
        if unrated > o.max_unrated_fraction * n or (not rated and o.unrated == "exclude"):
            shown = "; ".join(repr(s) for s in unrated_samples)
            raise UtilityError(
                f"human_interest: the judge gave no 'Rating: X/10' (X in 1..10) in {unrated} of "
                f"{n} replies, more than max_unrated_fraction = {o.max_unrated_fraction}; "
                f"e.g. {shown}. Check the judge model and judge_template"
            )
        minimum = o.unrated == "minimum"
        scores = [1.0 if x is None else x for x in ratings] if minimum else rated
        value = sum(scores) / len(scores)
        return UtilityResult(
            value=value,
            # Per item: its rating; an unrated reply left out of the mean ("exclude") scores the
            # mean of the rated ones, so that the item scores still average to the value.
            item_scores=tuple(scores)
            if minimum
            else tuple(value if x is None else x for x in ratings),
            metrics={
                "n": n,
                "rated": len(rated),
                "unrated": unrated,
                "unrated_scored_as": "minimum (1)" if o.unrated == "minimum" else "excluded",
                "mean_rating": sum(rated) / len(rated) if rated else None,
                "unrated_samples": unrated_samples,
                "samples": [
                    {"prompt": p[:100], "response": r[:200], "judge": j[:100]}
                    for p, r, j in list(zip(prompts, responses, replies, strict=True))[:_SAMPLES]
                ],
            },
        )
