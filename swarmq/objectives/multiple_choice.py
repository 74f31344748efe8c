"""``multiple_choice``: accuracy on lettered multiple-choice questions (MMLU, Hellaswag, ...).

Prompt, decoding and answer parsing follow the paper's reference code (``evaluate.py``:
``multiple_choice_prompt`` and ``multiple_choice_answer_parsing``), so utilities are comparable
with the paper's numbers.

``mode = "loglik"`` scores the same prompt without generating: each option's continuation
(`` A``, or the option's text) is scored by its log-likelihood, the options' probabilities are
normalised to sum to 1, and the model's answer is the most likely option. Small models are near
chance at generating a letter, but the probability they give the right option still moves with
their weights: ``score = "prob"`` makes that mean probability the utility.

``mode = "continuation"`` follows the lm-evaluation-harness convention for base and small
models: the question alone, as plain text (the options are not listed), and each option's text
scored as its continuation; ``normalise`` compares the sums as they are (``acc``) or per
character or per token (``acc_norm``). Listing the options first lets a small model copy them,
so that its score hardly depends on the option and measures the prompt, not the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from swarmq.errors import DatasetError, UtilityError
from swarmq.objectives._base import (
    LikelihoodScorer,
    TextGenerator,
    TokenLikelihoodScorer,
    Utility,
    UtilityOptions,
    UtilityResult,
    require_capability,
)
from swarmq.objectives._data import SPLITS, Dataset
from swarmq.objectives._registry import register_utility

__all__ = [
    "DEFAULT_INSTRUCTION",
    "NORMALISATIONS",
    "MultipleChoice",
    "OptionScore",
    "build_prompt",
    "option_probabilities",
    "parse_choice",
]

DEFAULT_INSTRUCTION = "Please choose an option that best answers the question."

# How many sample outputs a result keeps in its metrics: enough to see what the model does,
# small enough to store with every evaluation.
_SAMPLES = 3

Normalise = Literal["none", "chars", "tokens"]
#: How an option's log-likelihood is compared: as it is, per character, per token.
NORMALISATIONS: tuple[Normalise, ...] = ("none", "chars", "tokens")


@dataclass(frozen=True)
class OptionScore:
    """One option's log-likelihood as its continuation, and the lengths it can be divided by."""

    loglik: float
    chars: int
    tokens: int | None = None  # None: the generator gave no token counts

    def normalised(self, how: Normalise) -> float:
        """The log-likelihood as it is (``"none"``), per character or per token."""
        if how == "chars":
            return self.loglik / self.chars
        if how == "tokens":
            if not self.tokens:
                raise UtilityError("multiple_choice: per-token normalisation needs token counts")
            return self.loglik / self.tokens
        return self.loglik


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


def option_probabilities(scores: Sequence[float]) -> list[float]:
    """Softmax of per-option log-likelihoods: each option's probability among the options."""
    top = max(scores)
    weights = [math.exp(x - top) for x in scores]  # shifted by the max: no overflow
    total = sum(weights)
    return [w / total for w in weights]


def _probabilities(scores: Mapping[str, OptionScore], how: Normalise) -> dict[str, float]:
    letters = list(scores)
    probs = option_probabilities([scores[x].normalised(how) for x in letters])
    return dict(zip(letters, probs, strict=True))


def _best(probs: Mapping[str, float]) -> str:
    return max(probs, key=probs.__getitem__)  # the first maximum: dataset order breaks ties


class MultipleChoiceOptions(UtilityOptions):
    """Options of ``multiple_choice``."""

    max_new_tokens: int = Field(10, ge=1, description="tokens generated per question")
    instruction: str = Field(
        DEFAULT_INSTRUCTION,
        description="first line of the prompt; the paper uses 'Please choose an option that best "
        "completes the sentence.' for Hellaswag and none for Knowledge Crosswords",
    )
    mode: Literal["generate", "loglik", "continuation"] = Field(
        "generate",
        description="'generate': greedy generation and answer parsing (the paper); 'loglik': "
        "the option with the highest log-likelihood after the prompt that lists them; "
        "'continuation': the question alone as context, each option's text scored as its "
        "continuation (the lm-evaluation-harness convention; for base and small models)",
    )
    score: Literal["accuracy", "prob"] = Field(
        "accuracy",
        description="the utility: 'accuracy', or (mode 'loglik' or 'continuation') 'prob', the "
        "mean normalised probability of the gold option",
    )
    target: Literal["letter", "text"] = Field(
        "letter",
        description="mode = 'loglik': score ' A' (the letter) or ' <option text>' after the prompt",
    )
    normalise: Normalise = Field(
        "none",
        description="mode 'loglik' or 'continuation': compare options by their log-likelihood "
        "as it is ('none', the harness's acc), per character ('chars', the harness's acc_norm) "
        "or per token ('tokens')",
    )
    context: str = Field(
        "{question}",
        description="mode = 'continuation': the text each option continues, a str.format "
        "template with the single field {question} (e.g. 'Question: {question}\nAnswer:')",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "length_normalise" in data:
            raise ValueError(
                f"length_normalise = {data['length_normalise']!r} is no longer an option: "
                "write normalise = 'chars' (for true) or normalise = 'none' (for false)"
            )
        return data

    @field_validator("context")
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

    @model_validator(mode="after")
    def _per_mode(self) -> MultipleChoiceOptions:
        # Options that the chosen mode would silently ignore are refused, naming the mode
        # they belong to.
        belongs = {
            "score": (("loglik", "continuation"), "accuracy"),
            "normalise": (("loglik", "continuation"), "none"),
            "target": (("loglik",), "letter"),
            "instruction": (("generate", "loglik"), DEFAULT_INSTRUCTION),
            "context": (("continuation",), "{question}"),
        }
        given = [
            (f"{name} = {getattr(self, name)!r}", modes)
            for name, (modes, default) in belongs.items()
            if getattr(self, name) != default and self.mode not in modes
        ]
        if given:
            text, modes = given[0]
            where = " or ".join(repr(m) for m in modes)
            raise ValueError(f"{text} applies only to mode = {where} (mode is {self.mode!r})")
        return self


@register_utility("multiple_choice")
class MultipleChoice(Utility):
    """Accuracy: the share of questions whose parsed letter equals the gold ``answer``.

    Items: ``{"question": str, "choices": {"A": str, ...}, "answer": "A"}``. An output naming no
    choice counts as wrong (the paper parses it to the impossible letter ``Z``). With
    ``mode = "loglik"`` the answer is the most likely option instead (a tie goes to the option
    listed first), and ``score = "prob"`` makes the utility the mean probability of the gold
    option; the generator must then be a :class:`swarmq.objectives.LikelihoodScorer`. With
    ``mode = "continuation"`` the options are scored as continuations of the question alone
    (the lm-evaluation-harness convention), compared by ``normalise``; the generator must be a
    :class:`swarmq.objectives.TokenLikelihoodScorer`.
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
        """The text the model reads for each of ``examples``, in order: the paper's prompt
        listing the options, or in mode 'continuation' the ``context`` the options continue."""
        if self.options.mode == "continuation":
            return [self.options.context.format(question=ex["question"]) for ex in examples]
        return [
            build_prompt(ex["question"], ex["choices"], self.options.instruction) for ex in examples
        ]

    def continuations(self, example: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``(letter, continuation)`` of each option, in the dataset's order (modes 'loglik' and
        'continuation'): `` A`` for letters, else a space and the option's text."""
        choices: Mapping[str, str] = example["choices"]
        if self.options.mode == "loglik" and self.options.target == "letter":
            return [(letter, f" {letter}") for letter in choices]
        return [(letter, f" {text}") for letter, text in choices.items()]

    @property
    def _counts_tokens(self) -> bool:
        # Mode 'continuation' always reports every normalisation (acc and both acc_norm).
        return self.options.mode == "continuation" or self.options.normalise == "tokens"

    def option_loglikelihoods(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, OptionScore]]:
        """Per example, each option letter's :class:`OptionScore` (modes 'loglik' and
        'continuation'): its continuation's log-likelihood and length in characters, and in
        tokens where they are needed (mode 'continuation', ``normalise = "tokens"``).

        All options of all examples go to the generator in one call, so that it can batch
        them (and compute a context shared by several options once).
        """
        why = f"is set to mode = {self.options.mode!r}"
        prompts = self.prompts(examples)
        asked: list[tuple[int, str, str]] = [
            (i, letter, cont)
            for i, ex in enumerate(examples)
            for letter, cont in self.continuations(ex)
        ]
        contexts, conts = [prompts[i] for i, _, _ in asked], [c for _, _, c in asked]
        counted: list[tuple[float, int | None]]
        if self._counts_tokens:
            if self.options.normalise == "tokens":
                why = f"{why} with normalise = 'tokens'"
            tokens: TokenLikelihoodScorer = require_capability(
                generator, TokenLikelihoodScorer, "multiple_choice", why
            )
            counted = list(tokens.loglikelihood_tokens(contexts, conts))
        else:
            scorer: LikelihoodScorer = require_capability(
                generator, LikelihoodScorer, "multiple_choice", why
            )
            counted = [(value, None) for value in scorer.loglikelihood(contexts, conts)]
        if len(counted) != len(asked):
            raise UtilityError(
                f"multiple_choice: the generator returned {len(counted)} log-likelihoods for "
                f"{len(asked)} options"
            )
        per_example: list[dict[str, OptionScore]] = [{} for _ in examples]
        for (i, letter, cont), (value, count) in zip(asked, counted, strict=True):
            ll = float(value)
            if not math.isfinite(ll):
                raise UtilityError(
                    f"multiple_choice: the log-likelihood of option {letter!r} of example {i} "
                    f"is {value!r}, not a finite number"
                )
            if count is not None and (isinstance(count, bool) or int(count) < 1):
                raise UtilityError(
                    f"multiple_choice: option {letter!r} of example {i} was scored over "
                    f"{count!r} tokens; a continuation has at least one"
                )
            tokens_scored = None if count is None else int(count)
            per_example[i][letter] = OptionScore(ll, len(cont), tokens_scored)
        return per_example

    def option_scores(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, float]]:
        """Per example, each option letter's probability among its options (modes 'loglik' and
        'continuation'): the softmax of the log-likelihoods, normalised by ``normalise``."""
        how = self.options.normalise
        return [
            _probabilities(scores, how)
            for scores in self.option_loglikelihoods(generator, examples)
        ]

    def _score_loglik(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        raw = self.option_loglikelihoods(generator, examples)
        probs = [_probabilities(scores, self.options.normalise) for scores in raw]
        correct = 0
        gold_total = 0.0
        samples: list[dict[str, Any]] = []
        hits: list[bool] = []
        golds: list[float] = []
        for ex, p in zip(examples, probs, strict=True):
            best = _best(p)
            correct += best == ex["answer"]
            gold_total += p[ex["answer"]]
            hits.append(best == ex["answer"])
            golds.append(p[ex["answer"]])
            if len(samples) < _SAMPLES:
                rounded = {k: round(v, 4) for k, v in p.items()}
                samples.append({"probs": rounded, "predicted": best, "answer": ex["answer"]})
        n = len(examples)
        accuracy, gold_prob = correct / n, gold_total / n
        metrics: dict[str, Any] = {
            "n": n,
            "correct": correct,
            "accuracy": accuracy,
            "gold_prob": gold_prob,
        }
        if self._counts_tokens:
            # The same log-likelihoods compared the other ways: the harness's acc and acc_norm
            # side by side, at no extra model cost.
            metrics["accuracy_by_normalise"] = {
                how: sum(
                    _best(_probabilities(scores, how)) == ex["answer"]
                    for scores, ex in zip(raw, examples, strict=True)
                )
                / n
                for how in NORMALISATIONS
            }
        metrics["samples"] = samples
        return UtilityResult(
            value=gold_prob if self.options.score == "prob" else accuracy,
            metrics=metrics,
            # Per item, what the utility averages: the gold option's probability, or 1/0.
            item_scores=tuple(golds) if self.options.score == "prob" else tuple(map(float, hits)),
        )

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Generate greedily for every question, parse the letter, return the accuracy.

        In modes 'loglik' and 'continuation', rank the options by likelihood instead; metrics
        then hold both the accuracy and ``gold_prob``, the mean normalised probability of the
        gold option, and in mode 'continuation' ``accuracy_by_normalise``: the accuracy under
        each normalisation (the harness's acc, acc_norm per character and per token).
        """
        if not examples:
            raise UtilityError("multiple_choice: no examples to score")
        if self.options.mode != "generate":
            return self._score_loglik(generator, examples)
        prompts = self.prompts(examples)
        outputs = generator.generate(prompts, self.options.max_new_tokens)
        if len(outputs) != len(prompts):
            raise UtilityError(
                f"multiple_choice: the generator returned {len(outputs)} outputs "
                f"for {len(prompts)} prompts"
            )
        correct = unparsed = 0
        samples: list[dict[str, Any]] = []
        hits: list[bool] = []
        for ex, out in zip(examples, outputs, strict=True):
            parsed = parse_choice(out, ex["choices"])
            unparsed += parsed is None
            correct += parsed == ex["answer"]
            hits.append(parsed == ex["answer"])
            if len(samples) < _SAMPLES:
                samples.append({"output": out[:200], "parsed": parsed, "answer": ex["answer"]})
        n = len(examples)
        return UtilityResult(
            value=correct / n,
            metrics={"n": n, "correct": correct, "unparsed": unparsed, "samples": samples},
            item_scores=tuple(map(float, hits)),
        )

    def check_predictions(self) -> None:
        """Letters are voted on, except with ``score = "prob"`` (refused: a vote gives letters,
        whose accuracy is not that utility's value)."""
        if self.options.score == "prob":
            raise UtilityError(
                "multiple_choice with score = 'prob' gives a probability, not an answer, per "
                "example, so its models cannot be ensembled by majority vote; use score = "
                "'accuracy' for ensembles"
            )

    def predict(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> list[str | None]:
        """The parsed choice letter of each question (``None`` when the output names none).

        In modes 'loglik' and 'continuation' the most likely option. With ``score = "prob"``
        there is nothing to vote on that reproduces the utility (votes give letters, not
        probabilities): refused.
        """
        self.check_predictions()
        if not examples:
            raise UtilityError("multiple_choice: no examples to predict")
        if self.options.mode != "generate":
            return [_best(p) for p in self.option_scores(generator, examples)]
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
        if self.options.score == "prob":
            raise UtilityError(
                "multiple_choice with score = 'prob' cannot score letters: its utility is a "
                "probability; use score = 'accuracy' for ensembles"
            )
        if not examples or len(predictions) != len(examples):
            raise UtilityError(
                f"multiple_choice: {len(predictions)} predictions for {len(examples)} examples"
            )
        hits = [p == ex["answer"] for p, ex in zip(predictions, examples, strict=True)]
        correct = sum(hits)
        unparsed = sum(p is None for p in predictions)
        n = len(examples)
        return UtilityResult(
            value=correct / n,
            metrics={"n": n, "correct": correct, "unparsed": unparsed},
            item_scores=tuple(map(float, hits)),
        )
