"""``exact_match``: accuracy when the gold answer ends the output (NLGraph, GSM8k).

The paper's reference code counts an output correct when the answer string occurs in the
(stripped) output: anywhere in a 10-token output for NLGraph, in the last 5 words of a 200-token
output for GSM8k. By default swarmq looks only at the output's last characters, so that an
answer the model merely repeats from the question early on does not count, while "... the
answer is 42" still does; ``match = "whole"`` and ``tail_words = 5`` give the paper's two rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from swarmq.errors import DatasetError, UtilityError
from swarmq.objectives._base import TextGenerator, Utility, UtilityOptions, UtilityResult
from swarmq.objectives._data import SPLITS, Dataset
from swarmq.objectives._registry import register_utility

__all__ = ["ExactMatch", "answer_in_output", "answer_in_tail", "tail_length"]

_SAMPLES = 3


def tail_length(answer: str, tail_chars: int | None = None) -> int:
    """How many final characters of the output are searched: ``tail_chars``, or by default
    ``max(10, 2 * len(answer))`` for the stripped answer."""
    if tail_chars is not None:
        return tail_chars
    return max(10, 2 * len(answer.strip()))


def answer_in_tail(output: str, answer: str, tail_chars: int | None = None) -> bool:
    """Whether the stripped ``answer`` occurs in the last characters of the stripped ``output``."""
    gold = answer.strip()
    text = output.strip()
    if not gold:
        return False
    return gold in text[-tail_length(gold, tail_chars) :]


def answer_in_output(
    output: str,
    answer: str,
    *,
    match: Literal["tail", "whole"] = "tail",
    tail_chars: int | None = None,
    tail_words: int | None = None,
) -> bool:
    """The test of ``exact_match``: is the stripped ``answer`` in the chosen part of ``output``?

    ``match = "whole"``: anywhere in the stripped output (the reference code's NLGraph rule).
    ``tail_words = K``: in the last K space-separated words (its GSM8k rule, with K = 5).
    Otherwise: :func:`answer_in_tail` with ``tail_chars``.
    """
    gold = answer.strip()
    if not gold:
        return False
    if match == "whole":
        return gold in output.strip()
    if tail_words is not None:
        return gold in " ".join(output.strip().split(" ")[-tail_words:])
    return answer_in_tail(output, answer, tail_chars)


class ExactMatchOptions(UtilityOptions):
    """Options of ``exact_match``."""

    max_new_tokens: int = Field(16, ge=1, description="tokens generated per question")
    prompt_template: str = Field(
        "{question}", description="str.format template with the single field {question}"
    )
    tail_chars: int | None = Field(
        None,
        ge=1,
        description="characters of the output's end searched; default max(10, 2*len(answer))",
    )
    tail_words: int | None = Field(
        None,
        ge=1,
        description="search the last K space-separated words instead (the paper's GSM8k rule: 5)",
    )
    match: Literal["tail", "whole"] = Field(
        "tail",
        description="'whole' searches the whole output (the paper's NLGraph rule, with "
        "max_new_tokens = 10)",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> ExactMatchOptions:
        if self.tail_chars is not None and self.tail_words is not None:
            raise ValueError("set tail_chars or tail_words, not both")
        if self.match == "whole" and (self.tail_chars is not None or self.tail_words is not None):
            raise ValueError(
                "match = 'whole' searches the whole output: remove tail_chars and tail_words"
            )
        return self

    @field_validator("prompt_template")
    @classmethod
    def _one_field(cls, value: str) -> str:
        try:
            value.format(question="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"must be a str.format template whose only field is {{question}} "
                f"(write {{{{ and }}}} for literal braces): {type(err).__name__}: {err}"
            ) from None
        return value


@register_utility("exact_match")
class ExactMatch(Utility):
    """Accuracy: the share of questions whose gold ``answer`` ends the generated text.

    Items: ``{"question": str, "answer": str}`` (an integer answer is compared as its text).
    """

    example_keys: ClassVar[tuple[str, ...]] = ("question", "answer")
    Options = ExactMatchOptions
    options: ExactMatchOptions

    def check_dataset(self, dataset: Dataset) -> None:
        """An empty answer would match nothing (or, naively, everything): refuse it."""
        for split in SPLITS:
            for i, item in enumerate(dataset.split(split)):
                if not str(item["answer"]).strip():
                    raise DatasetError(
                        f"dataset file {str(dataset.path)!r}: {split}[{i}]['answer'] is empty; "
                        "expected a non-empty string"
                    )

    def prompts(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        """The prompts of ``examples``, in order."""
        return [self.options.prompt_template.format(question=ex["question"]) for ex in examples]

    def is_correct(self, output: str, answer: str) -> bool:
        """Whether ``output`` gives ``answer`` by this utility's rule (see the options)."""
        o = self.options
        return answer_in_output(
            output, answer, match=o.match, tail_chars=o.tail_chars, tail_words=o.tail_words
        )

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Generate greedily for every question and count answers found in the output's tail."""
        if not examples:
            raise UtilityError("exact_match: no examples to score")
        prompts = self.prompts(examples)
        outputs = generator.generate(prompts, self.options.max_new_tokens)
        if len(outputs) != len(prompts):
            raise UtilityError(
                f"exact_match: the generator returned {len(outputs)} outputs "
                f"for {len(prompts)} prompts"
            )
        correct = 0
        samples: list[dict[str, Any]] = []
        hits: list[bool] = []
        for ex, out in zip(examples, outputs, strict=True):
            answer = str(ex["answer"])
            hit = self.is_correct(out, answer)
            correct += hit
            hits.append(hit)
            if len(samples) < _SAMPLES:
                samples.append({"output": out[:200], "answer": answer, "correct": hit})
        n = len(examples)
        return UtilityResult(
            value=correct / n,
            metrics={"n": n, "correct": correct, "samples": samples},
            item_scores=tuple(map(float, hits)),
        )

    def predict(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> list[str | None]:
        """The stripped output of each question (``None`` when empty).

        Votes therefore count identical outputs; the output is kept whole, not reduced to a
        guessed final answer, so that scoring a prediction is exactly :meth:`score`'s test.
        """
        if not examples:
            raise UtilityError("exact_match: no examples to predict")
        prompts = self.prompts(examples)
        outputs = generator.generate(prompts, self.options.max_new_tokens)
        if len(outputs) != len(prompts):
            raise UtilityError(
                f"exact_match: the generator returned {len(outputs)} outputs "
                f"for {len(prompts)} prompts"
            )
        return [out.strip() or None for out in outputs]

    def score_predictions(
        self, predictions: Sequence[str | None], examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Accuracy of given outputs by the same tail test as :meth:`score`."""
        if not examples or len(predictions) != len(examples):
            raise UtilityError(
                f"exact_match: {len(predictions)} predictions for {len(examples)} examples"
            )
        hits = [
            p is not None and self.is_correct(p, str(ex["answer"]))
            for p, ex in zip(predictions, examples, strict=True)
        ]
        correct = sum(hits)
        n = len(examples)
        return UtilityResult(
            value=correct / n,
            metrics={"n": n, "correct": correct},
            item_scores=tuple(map(float, hits)),
        )
