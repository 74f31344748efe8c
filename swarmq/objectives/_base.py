"""The contract of a utility (objective): options, required dataset keys, and ``score``.

A utility turns a model into one scalar, higher is better. It never touches torch: it only sees
a :class:`TextGenerator`, so it can be unit-tested with a fake generator that returns canned
strings, and the CLI can validate a utility's options without importing a model library.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from swarmq.errors import UtilityError

if TYPE_CHECKING:
    from swarmq.objectives._data import Dataset

__all__ = [
    "ChatGenerator",
    "LikelihoodScorer",
    "RespondingUtility",
    "TextGenerator",
    "TokenLikelihoodScorer",
    "Utility",
    "UtilityOptions",
    "UtilityResult",
    "check_item_scores",
    "complete",
    "require_capability",
]


@runtime_checkable
class TextGenerator(Protocol):
    """Anything that completes prompts greedily.

    ``generate`` returns, for each prompt in order, only the newly generated text (the prompt is
    not repeated), decoded without special tokens and not stripped. Decoding must be greedy so
    that a utility is a deterministic function of the model's weights.
    """

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]: ...


@runtime_checkable
class LikelihoodScorer(Protocol):
    """Optional generator capability: how likely the model finds given continuations.

    ``loglikelihood`` returns, for each ``(prompt, continuation)`` pair in order, the sum of the
    natural-log probabilities of the continuation's tokens given the prompt (the prompt's own
    tokens are not scored). It is batched and deterministic: equal inputs give equal numbers,
    whatever else is in the batch (up to floating-point noise of a few 1e-5).
    """

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float]: ...


@runtime_checkable
class TokenLikelihoodScorer(Protocol):
    """Optional generator capability: :class:`LikelihoodScorer` with token counts.

    ``loglikelihood_tokens`` returns, for each ``(prompt, continuation)`` pair in order, the
    sum of the continuation's tokens' log-probabilities given the prompt (as ``loglikelihood``)
    and the number of tokens scored, so that options can be compared per token.
    """

    def loglikelihood_tokens(
        self, prompts: list[str], continuations: list[str]
    ) -> list[tuple[float, int]]: ...


@runtime_checkable
class ChatGenerator(Protocol):
    """Optional generator capability: greedy replies to prompts sent as one chat user turn.

    ``generate_chat`` wraps each prompt in the model's chat template (a single user message and
    the assistant's turn opened) and returns the reply only, like :meth:`TextGenerator.generate`.
    """

    def generate_chat(self, prompts: list[str], max_new_tokens: int) -> list[str]: ...


#: The dtypes a judge or reward model may be loaded in.
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
#: How a reward classifier reads a pair: through its chat template, as a sentence pair, or by
#: what its tokenizer has.
RewardInput = Literal["auto", "chat", "pair"]


@runtime_checkable
class RewardClassifier(Protocol):
    """A reward model: scores ``(prompt, response)`` pairs (see ``reward_model``)."""

    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        label: int | None,
        input_format: RewardInput,
        batch_size: int,
        max_length: int,
    ) -> list[float]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


@runtime_checkable
class ModelLoader(Protocol):
    """Optional generator capability: load a judge LLM or a reward classifier on its side.

    Utilities scored by another model (``human_interest``, ``reward_model``) ask the generator
    that runs them for it, so objectives never import the model side: swarmq's evaluator loads
    each once per process and keeps it. ``device`` ``None`` means the evaluated model's device.
    """

    def load_judge(
        self, path: str, dtype: Dtype, device: str | None, batch_size: int
    ) -> TextGenerator: ...

    def load_reward_classifier(
        self, path: str, dtype: Dtype, device: str | None
    ) -> RewardClassifier: ...


def check_rewards(values: Any, n: int, source: str) -> list[float]:
    """``values`` as ``n`` finite floats, or :class:`UtilityError` naming ``source``."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UtilityError(
            f"{source} returned {type(values).__name__}, not a list of {n} numbers"
        ) from None
    if len(out) != n:
        raise UtilityError(f"{source} returned {len(out)} rewards for {n} responses")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise UtilityError(f"{source} returned a non-finite reward {bad[0]!r}")
    return out


def require_capability(generator: Any, capability: type, utility: str, why: str) -> Any:
    """Return ``generator`` if it has ``capability`` (a protocol above), else raise.

    Utilities that need more than :class:`TextGenerator` call this first, so that a generator
    lacking the method fails with a message naming the utility, the missing method and the
    option that asked for it, instead of an ``AttributeError`` deep inside scoring.
    """
    if isinstance(generator, capability):
        return generator
    methods = ", ".join(
        name
        for name in (
            "loglikelihood",
            "loglikelihood_tokens",
            "generate_chat",
            "load_judge",
            "load_reward_classifier",
        )
        if name in vars(capability)
    )
    raise UtilityError(
        f"utility {utility!r} {why}, which needs a generator with {methods}() "
        f"({capability.__name__}); {type(generator).__name__} does not have it"
    )


def complete(
    generator: TextGenerator,
    prompts: list[str],
    max_new_tokens: int,
    *,
    chat: bool,
    utility: str,
    why: str,
    who: str = "generator",
) -> list[str]:
    """Greedy completions of ``prompts``, through the chat template when ``chat`` is true.

    ``why`` names the option that asked for the chat template (see :func:`require_capability`)
    and ``who`` the model in errors ("generator", "judge"); a generator that returns another
    number of outputs than prompts is refused rather than zipped short.
    """
    if chat:
        chatter: ChatGenerator = require_capability(generator, ChatGenerator, utility, why)
        outputs = chatter.generate_chat(prompts, max_new_tokens)
    else:
        outputs = generator.generate(prompts, max_new_tokens)
    if len(outputs) != len(prompts):
        raise UtilityError(
            f"{utility}: the {who} returned {len(outputs)} outputs for {len(prompts)} prompts"
        )
    return outputs


@dataclass(frozen=True)
class UtilityResult:
    """The value of a utility and a small, JSON-serialisable account of how it was reached.

    ``metrics`` holds counts (``n``, ``correct``, ...) and at most a few sample outputs, never the
    whole list of predictions: results are stored per evaluation, for every particle.

    ``item_scores`` holds one finite score per example, in the examples' order: 1.0 or 0.0 for
    an accuracy, the example's own contribution otherwise (see each utility). They are recorded
    with every evaluation (compactly, see :mod:`swarmq.storage`), so that paired bootstrap
    intervals between two models need no evaluation again. ``None`` means the utility gives no
    per-example scores (a plug-in may leave them out; intervals are then not available). When
    ``metrics`` has ``n``, ``item_scores`` must hold ``n`` scores.
    """

    value: float
    metrics: dict[str, Any] = field(default_factory=dict)
    item_scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        ok = isinstance(self.value, numbers.Real) and not isinstance(self.value, bool)
        value = float(self.value) if ok else math.nan
        if not math.isfinite(value):
            raise UtilityError(f"a utility value must be a finite number, got {self.value!r}")
        # Normalise numpy scalars to a plain float so the result serialises as JSON.
        object.__setattr__(self, "value", value)
        if self.item_scores is not None:
            object.__setattr__(self, "item_scores", check_item_scores(self.item_scores))
            n = self.metrics.get("n")
            if isinstance(n, int) and not isinstance(n, bool) and n != len(self.item_scores):
                raise UtilityError(
                    f"a utility result with n = {n} examples has {len(self.item_scores)} item "
                    "scores; give one score per example, in the examples' order"
                )


def check_item_scores(scores: Any) -> tuple[float, ...]:
    """``scores`` as a tuple of plain floats; refuses a non-number and NaN or infinity."""
    out: list[float] = []
    for i, x in enumerate(scores):
        # bools (and numpy's) are welcome: a correct/wrong flag is the score 1.0/0.0.
        ok = isinstance(x, numbers.Real) or getattr(getattr(x, "dtype", None), "kind", "") == "b"
        value = float(x) if ok else math.nan
        if not math.isfinite(value):
            raise UtilityError(f"item score {i} must be a finite number, got {x!r}")
        out.append(value)
    return tuple(out)


class UtilityOptions(BaseModel):
    """Base of every utility's ``Options``: frozen, unknown options and NaN/inf refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _describe_field(name: str, info: Any) -> str:
    annotation = info.annotation
    if isinstance(annotation, type):
        annotation = annotation.__name__
    annotation = str(annotation).replace("typing.", "")
    constraints = ", ".join(
        f"{sign} {getattr(m, attr)}"
        for m in info.metadata
        for attr, sign in _BOUNDS
        if hasattr(m, attr)
    )
    default = "required" if info.is_required() else f"default {info.get_default()!r}"
    text = f"{name} ({annotation}{', ' + constraints if constraints else ''}; {default})"
    if info.description:
        text += f": {info.description}"
    return text


def describe_options(options_model: type[UtilityOptions]) -> str:
    """One line per accepted option: name, type, constraints, default and description."""
    fields = options_model.model_fields
    if not fields:
        return "  (this utility takes no options)"
    return "\n".join("  " + _describe_field(n, f) for n, f in fields.items())


class Utility(ABC):
    """A registered objective: subclass it, set ``example_keys`` and ``Options``, write ``score``.

    ``name`` is set by :func:`swarmq.objectives.register_utility`. An instance is built from the
    ``[objective] options`` table; a bad option raises :class:`UtilityError` naming the option,
    the value given, and the options this utility accepts.
    """

    name: ClassVar[str] = ""
    #: Keys every dataset item must have; checked when the dataset is loaded.
    example_keys: ClassVar[tuple[str, ...]] = ()
    #: The options model; subclasses replace it with their own (subclass of UtilityOptions).
    Options: ClassVar[type[UtilityOptions]] = UtilityOptions
    #: The validated options of this instance.
    options: UtilityOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        given = dict(options or {})
        try:
            self.options = self.Options.model_validate(given)
        except ValidationError as err:
            raise UtilityError(self._option_error(err)) from None

    def _option_error(self, err: ValidationError) -> str:
        label = self.name or type(self).__name__
        lines = [f"invalid options for utility {label!r}:"]
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(options)"
            if e["type"] == "extra_forbidden":
                lines.append(f"  {loc} = {e.get('input')!r}: unknown option")
            elif e["type"] == "missing":
                lines.append(f"  {loc}: required option is missing")
            else:
                msg = e["msg"].removeprefix("Value error, ")
                lines.append(f"  {loc} = {e.get('input')!r}: {msg}")
        lines.append("accepted options:")
        lines.append(describe_options(self.Options))
        return "\n".join(lines)

    def check_dataset(self, dataset: Dataset) -> None:  # noqa: B027 - optional hook, not abstract
        """Check dataset content beyond key presence (e.g. the gold answer is one of the choices).

        Raise :class:`swarmq.errors.DatasetError` naming the file, split and item index. Called
        when a search is created and when an evaluator loads its data. The default accepts all.
        """

    @abstractmethod
    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """Evaluate ``generator`` on ``examples`` (items carrying :attr:`example_keys`).

        Must return a finite value; must be deterministic given a deterministic generator.
        Should also return ``item_scores``, one per example in order (see
        :class:`UtilityResult`): without them a search's results carry no bootstrap interval.
        """

    # Optional: per-example answers, for ensembles (a majority vote over several models). A
    # utility that supports them overrides both methods, so that
    # ``score_predictions(predict(g, ex), ex)`` equals ``score(g, ex)``.
    def check_predictions(self) -> None:
        """Raise :class:`UtilityError` unless :meth:`predict` gives answers with these options.

        Lets a caller (the ensemble of the final report) refuse before any evaluation, also for
        utilities whose support depends on their options. The default: supported exactly when
        the class overrides :meth:`predict`.
        """
        if type(self).predict is Utility.predict:
            raise UtilityError(
                f"utility {self.name or type(self).__name__!r} gives no per-example answers, so "
                "its models cannot be ensembled by majority vote"
            )

    def predict(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> list[str | None]:
        """One answer per example (``None``: the output names no answer), compared by equality.

        The default refuses: a utility that is not a mean over per-example answers (a reward,
        a judge's rating) has nothing to vote on.
        """
        self.check_predictions()
        # Reached only through super().predict() from a subclass that overrides predict.
        raise UtilityError(
            f"utility {self.name or type(self).__name__!r}: Utility.predict gives no answers; "
            "a utility with per-example answers implements predict itself"
        )

    def score_predictions(
        self, predictions: Sequence[str | None], examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        """The utility of given answers (from :meth:`predict`, or an ensemble's vote)."""
        raise UtilityError(
            f"utility {self.name or type(self).__name__!r} cannot score per-example answers"
        )


class RespondingUtility(Utility):
    """A utility that scores the model's greedy responses to prompts (``reward_model``,
    ``human_interest``); its options have ``max_new_tokens`` and ``chat_template``."""

    def responses(self, generator: TextGenerator, prompts: list[str]) -> list[str]:
        """The model's greedy responses to ``prompts``, stripped of surrounding whitespace (as
        the reference code's generation does); through the chat template unless turned off."""
        o: Any = self.options
        outputs = complete(
            generator,
            prompts,
            o.max_new_tokens,
            chat=o.chat_template,
            utility=self.name,
            why="is set to chat_template = true",
        )
        return [out.strip() for out in outputs]
