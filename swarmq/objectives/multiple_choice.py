"""``multiple_choice``: accuracy on lettered multiple-choice questions (MMLU, Hellaswag, ...).

Prompt, decoding and answer parsing follow the paper's reference code (``evaluate.py``:
``multiple_choice_prompt`` and ``multiple_choice_answer_parsing``), so utilities are comparable
with the paper's numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field

from swarmq.errors import DatasetError, UtilityError
from swarmq.objectives._base import TextGenerator, Utility, UtilityOptions, UtilityResult
from swarmq.objectives._data import SPLITS, Dataset
from swarmq.objectives._registry import register_utility

__all__ = ["DEFAULT_INSTRUCTION", "MultipleChoice", "build_prompt", "parse_choice"]

DEFAULT_INSTRUCTION = "Please choose an option that best answers the question."

# How many sample outputs a result keeps in its metrics: enough to see what the model does,
# small enough to store with every evaluation.
_SAMPLES = 3


def build_prompt(
    question: str, choices: Mapping[str, str], instruction: str = DEFAULT_INSTRUCTION
) -> str:
    """The paper's prompt: instruction, ``Question: ...``, one ``X: text`` line per choice,
    ``The answer is``. An empty ``instruction`` omits its line (as the paper does for Knowledge
    Crosswords). Choices are listed in the order the dataset gives them."""
    head = f"{instruction}\n" if instruction else ""
    lines = "".join(f"{letter}: {text}\n" for letter, text in choices.items())
    return f"{head}Question: {question}\n{lines}The answer is"


def parse_choice(output: str, choices: Mapping[str, str]) -> str | None:
    """The choice letter an output names, or ``None`` when it names none.

    On the stripped output, in order: a choice letter (case-sensitive) among the first 5
    characters; else among the last 5 characters; else a choice text found as a case-insensitive
    substring. Within each rule letters are tried in alphabetical order and the first match wins.
    Unlike the reference code, an empty choice text never matches (it would match any output).
    """
    text = output.strip()
    letters = sorted(choices)
    head, tail = text[:5], text[-5:]
    for letter in letters:
        if letter in head:
            return letter
    for letter in letters:
        if letter in tail:
            return letter
    lowered = text.lower()
    for letter in letters:
        option = choices[letter].lower()
        if option and option in lowered:
            return letter
    return None


class MultipleChoiceOptions(UtilityOptions):
    """Options of ``multiple_choice``."""

    max_new_tokens: int = Field(10, ge=1, description="tokens generated per question")
    instruction: str = Field(
        DEFAULT_INSTRUCTION,
        description="first line of the prompt; the paper uses 'Please choose an option that best "
        "completes the sentence.' for Hellaswag and none for Knowledge Crosswords",
    )


@register_utility("multiple_choice")
class MultipleChoice(Utility):
    """Accuracy: the share of questions whose parsed letter equals the gold ``answer``.

    Items: ``{"question": str, "choices": {"A": str, ...}, "answer": "A"}``. An output naming no
    choice counts as wrong (the paper parses it to the impossible letter ``Z``).
    """

    example_keys: ClassVar[tuple[str, ...]] = ("question", "choices", "answer")
    Options = MultipleChoiceOptions
    options: MultipleChoiceOptions

    def check_dataset(self, dataset: Dataset) -> None:
        """Every gold ``answer`` must be one of its item's choice letters."""
        for split in SPLITS:
            for i, item in enumerate(dataset.split(split)):
                if item["answer"] not in item["choices"]:
                    raise DatasetError(
                        f"dataset file {str(dataset.path)!r}: {split}[{i}]['answer'] = "
                        f"{item['answer']!r} is not one of its choices {sorted(item['choices'])}"
                    )

    def prompts(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        """The prompts of ``examples``, in order."""
        return [
            build_prompt(ex["question"], ex["choices"], self.options.instruction) for ex in examples
        ]

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Generate greedily for every question, parse the letter, return the accuracy."""
        if not examples:
            raise UtilityError("multiple_choice: no examples to score")
        prompts = self.prompts(examples)
        outputs = generator.generate(prompts, self.options.max_new_tokens)
        if len(outputs) != len(prompts):
            raise UtilityError(
                f"multiple_choice: the generator returned {len(outputs)} outputs "
                f"for {len(prompts)} prompts"
            )
        correct = unparsed = 0
        samples: list[dict[str, Any]] = []
        for ex, out in zip(examples, outputs, strict=True):
            parsed = parse_choice(out, ex["choices"])
            unparsed += parsed is None
            correct += parsed == ex["answer"]
            if len(samples) < _SAMPLES:
                samples.append({"output": out[:200], "parsed": parsed, "answer": ex["answer"]})
        n = len(examples)
        return UtilityResult(
            value=correct / n,
            metrics={"n": n, "correct": correct, "unparsed": unparsed, "samples": samples},
        )

    def predict(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> list[str | None]:
        """The parsed choice letter of each question (``None`` when the output names none)."""
        if not examples:
            raise UtilityError("multiple_choice: no examples to predict")
        prompts = self.prompts(examples)
        outputs = generator.generate(prompts, self.options.max_new_tokens)
        if len(outputs) != len(prompts):
            raise UtilityError(
                f"multiple_choice: the generator returned {len(outputs)} outputs "
                f"for {len(prompts)} prompts"
            )
        return [parse_choice(out, ex["choices"]) for ex, out in zip(examples, outputs, strict=True)]

    def score_predictions(
        self, predictions: Sequence[str | None], examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Accuracy of given letters; ``None`` (no answer) counts as wrong, as in :meth:`score`."""
        if not examples or len(predictions) != len(examples):
            raise UtilityError(
                f"multiple_choice: {len(predictions)} predictions for {len(examples)} examples"
            )
        correct = sum(p == ex["answer"] for p, ex in zip(predictions, examples, strict=True))
        unparsed = sum(p is None for p in predictions)
        n = len(examples)
        return UtilityResult(
            value=correct / n, metrics={"n": n, "correct": correct, "unparsed": unparsed}
        )
