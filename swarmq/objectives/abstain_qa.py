"""``abstain_qa``: effective reliability of multiple-choice answers with self-reflection abstention.

As the paper's reference code (``evaluate.py``, the ``AbstainQA`` objective, after Feng et al.
2024, "Don't Hallucinate, Abstain"): the model answers the multiple-choice prompt; then it is
shown its own answer and asked whether it is true or false; a reply containing "false" means
that it abstains. Each answered question scores +1 if right and -1 if wrong, each abstention 0;
the utility is the mean, in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field

from swarmq.errors import UtilityError
from swarmq.objectives._base import TextGenerator, Utility, UtilityOptions, UtilityResult
from swarmq.objectives._data import Dataset
from swarmq.objectives._registry import register_utility
from swarmq.objectives.multiple_choice import (
    DEFAULT_INSTRUCTION,
    MultipleChoice,
    build_prompt,
    parse_choice,
)

__all__ = ["DEFAULT_CHECK_QUESTION", "AbstainQA", "effective_reliability", "reflection_prompt"]

DEFAULT_CHECK_QUESTION = "Is the proposed answer true or false? Directly answer with true or false."

_SAMPLES = 3


def reflection_prompt(prompt: str, answer: str, question: str = DEFAULT_CHECK_QUESTION) -> str:
    """The self-check prompt: the question's prompt, the model's stripped answer, the question."""
    return f"{prompt}\nProposed answer: {answer.strip()}\n{question}"


def abstains(reply: str) -> bool:
    """Whether a self-check reply means "abstain": it contains "false" in any case."""
    return "false" in reply.lower()


def effective_reliability(correct: Sequence[bool], abstained: Sequence[bool]) -> float:
    """(answered and right - answered and wrong) / all questions; abstentions count 0."""
    if not correct or len(correct) != len(abstained):
        raise UtilityError(
            f"effective reliability needs as many abstain flags ({len(abstained)}) as correct "
            f"flags ({len(correct)}), at least one"
        )
    score = sum((1 if c else -1) for c, a in zip(correct, abstained, strict=True) if not a)
    return score / len(correct)


class AbstainQAOptions(UtilityOptions):
    """Options of ``abstain_qa``."""

    max_new_tokens: int = Field(10, ge=1, description="tokens generated per answer")
    check_max_new_tokens: int = Field(
        10, ge=1, description="tokens generated per true/false self-check"
    )
    instruction: str = Field(
        DEFAULT_INSTRUCTION, description="first line of the question prompt (as multiple_choice)"
    )
    check_question: str = Field(
        DEFAULT_CHECK_QUESTION,
        min_length=1,
        description="the self-check question put after 'Proposed answer: ...'",
    )


@register_utility("abstain_qa")
class AbstainQA(Utility):
    """Effective reliability: answer, self-check (true/false), abstain on "false".

    Items: those of ``multiple_choice``, ``{"question", "choices", "answer"}``. An answer naming
    no choice and not abstained on counts as wrong, as in the reference code. Metrics hold the
    counts: answered, abstained, answered right and wrong, plain accuracy and unparsed answers.
    """

    example_keys: ClassVar[tuple[str, ...]] = ("question", "choices", "answer")
    Options = AbstainQAOptions
    options: AbstainQAOptions

    def check_dataset(self, dataset: Dataset) -> None:
        """Every gold ``answer`` must be one of its item's choice letters."""
        MultipleChoice().check_dataset(dataset)

    def prompts(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        """The question prompts of ``examples`` (the paper's multiple-choice prompt)."""
        return [
            build_prompt(ex["question"], ex["choices"], self.options.instruction) for ex in examples
        ]

    def _generate(
        self, generator: TextGenerator, prompts: list[str], max_new_tokens: int
    ) -> list[str]:
        outputs = generator.generate(prompts, max_new_tokens)
        if len(outputs) != len(prompts):
            raise UtilityError(
                f"abstain_qa: the generator returned {len(outputs)} outputs "
                f"for {len(prompts)} prompts"
            )
        return outputs

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Answer every question, ask the model to check each answer, return the reliability."""
        if not examples:
            raise UtilityError("abstain_qa: no examples to score")
        o = self.options
        prompts = self.prompts(examples)
        answers = self._generate(generator, prompts, o.max_new_tokens)
        checks = self._generate(
            generator,
            [
                reflection_prompt(p, a, o.check_question)
                for p, a in zip(prompts, answers, strict=True)
            ],
            o.check_max_new_tokens,
        )
        correct: list[bool] = []
        abstained: list[bool] = []
        unparsed = 0
        samples: list[dict[str, Any]] = []
        for ex, answer, check in zip(examples, answers, checks, strict=True):
            parsed = parse_choice(answer, ex["choices"])
            unparsed += parsed is None
            correct.append(parsed == ex["answer"])
            abstained.append(abstains(check))
            if len(samples) < _SAMPLES:
                samples.append(
                    {
                        "output": answer[:200],
                        "parsed": parsed,
                        "answer": ex["answer"],
                        "check": check[:100],
                        "abstained": abstained[-1],
                    }
                )
        n = len(examples)
        right = sum(c and not a for c, a in zip(correct, abstained, strict=True))
        wrong = sum(not c and not a for c, a in zip(correct, abstained, strict=True))
        return UtilityResult(
            value=effective_reliability(correct, abstained),
            # Per item: +1 answered right, -1 answered wrong, 0 abstained (their mean is the
            # effective reliability).
            item_scores=tuple(
                0.0 if a else (1.0 if c else -1.0) for c, a in zip(correct, abstained, strict=True)
            ),
            metrics={
                "n": n,
                "answered": n - sum(abstained),
                "abstained": sum(abstained),
                "answered_correct": right,
                "answered_wrong": wrong,
                "correct": sum(correct),
                "unparsed": unparsed,
                "samples": samples,
            },
        )
