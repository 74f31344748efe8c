"""Judge and reward models: loaded on first use, once per process, kept for later evaluations.

Utilities that score a response with another model (``reward_model``, ``human_interest``) would
otherwise reload gigabytes for every particle. torch and transformers are imported inside the
functions here, never when :mod:`swarmq.modeling` is imported, so the CLI stays light. A
utility reaches them through the generator that runs it (:class:`ProcessModels`, the
:class:`swarmq.objectives.ModelLoader` capability), so objectives never import this side.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from swarmq.errors import ModelError, UtilityError
from swarmq.modeling._device import release_memory, torch_dtype
from swarmq.objectives import Dtype, RewardInput

if TYPE_CHECKING:
    from swarmq.modeling._resident import ResidentModel

__all__ = [
    "MAX_JUDGE_MODELS",
    "ClassifierReward",
    "JudgeModel",
    "LoadsModels",
    "clear_judge_models",
    "load_classifier_reward",
    "load_judge",
    "resolve_device",
]

#: How many judge/reward models a process keeps loaded (least recently used dropped first). Two:
#: enough for a reward model and a judge side by side, few enough to bound memory.
MAX_JUDGE_MODELS = 2

_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple[str, ...], Any] = OrderedDict()


def resolve_device(spec: str | None, generator: Any) -> str:
    """The device for a judge: ``spec``, or by default the device of the evaluated model.

    ``None`` takes ``generator.device`` (the evaluator's resolved base-model device) when the
    generator has one, else ``"auto"``; the result goes through
    :func:`swarmq.modeling.select_device`, which checks that the device exists.
    """
    from swarmq.modeling._device import select_device

    if spec is None:
        found = getattr(generator, "device", None)
        spec = found if isinstance(found, str) and found else "auto"
    return select_device(spec)


def _cached(key: tuple[str, ...], load: Callable[[], Any]) -> Any:
    # The lock is held while loading, so two threads asking for the same model load it once.
    with _LOCK:
        found = _CACHE.get(key)
        if found is not None:
            _CACHE.move_to_end(key)
            return found
        while len(_CACHE) >= MAX_JUDGE_MODELS:
            _CACHE.popitem(last=False)
            release_memory()
        loaded = load()
        _CACHE[key] = loaded
        return loaded


def clear_judge_models() -> None:
    """Drop every cached judge and reward model of this process (frees their memory)."""
    with _LOCK:
        _CACHE.clear()
    release_memory()


# ---------------------------------------------------------------------------- judge LLM


class JudgeModel:
    """A causal LM used as a judge: greedy generation, plain or through its chat template."""

    def __init__(self, resident: ResidentModel, batch_size: int) -> None:
        self.resident = resident
        self.batch_size = batch_size

    @property
    def device(self) -> str:
        """The device the judge runs on."""
        return self.resident.device

    @property
    def has_chat_template(self) -> bool:
        """Whether the judge's tokenizer defines a chat template."""
        return bool(getattr(self.resident.tokenizer, "chat_template", None))

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of plain prompts."""
        return self.resident.generate(prompts, max_new_tokens, self.batch_size)

    def generate_chat(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy replies to prompts sent as one chat user turn each."""
        texts = self.resident.chat_prompts(prompts)
        return self.resident.generate(texts, max_new_tokens, self.batch_size)


def load_judge(path: str, dtype: Dtype, device: str, batch_size: int) -> JudgeModel:
    """The judge LLM at ``path`` (a causal LM folder or a cached hub id), loaded once."""
    from swarmq.config import BaseModelConfig
    from swarmq.modeling._resident import ResidentModel

    def load() -> ResidentModel:
        try:
            return ResidentModel.load(BaseModelConfig(path=path, dtype=dtype, device=device), None)
        except ModelError as err:
            raise ModelError(f"cannot load the judge model {path!r}: {err}") from err

    resident = _cached(("judge", path, dtype, device), load)
    return JudgeModel(resident, batch_size)


# ---------------------------------------------------------------------------- reward classifier


class ClassifierReward:
    """A reward model: any ``AutoModelForSequenceClassification`` checkpoint and its tokenizer.

    The reward of ``(prompt, response)`` is the single logit of a one-output model, or for a
    model with several labels the softmax probability of the chosen ``label``.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str, path: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.path = path
        self.lock = threading.Lock()

    @property
    def num_labels(self) -> int:
        """How many outputs the classifier has."""
        return int(self.model.config.num_labels)

    def _texts(self, prompts: Sequence[str], responses: Sequence[str], chat: bool) -> Any:
        tok = self.tokenizer
        if not chat:
            return list(prompts), list(responses)
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                tokenize=False,
            )
            for p, r in zip(prompts, responses, strict=True)
        ]
        return texts, None

    def rewards(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        label: int | None,
        input_format: RewardInput,
        batch_size: int,
        max_length: int,
    ) -> list[float]:
        """The reward of each ``(prompt, response)``.

        ``input_format``: ``"chat"`` renders a user turn and an assistant turn with the reward
        model's chat template (as the paper's reward model reads them); ``"pair"`` encodes the
        two texts as a sentence pair; ``"auto"`` is chat when the tokenizer has a template.
        """
        import torch

        n = self.num_labels
        if label is None and n != 1:
            names = getattr(self.model.config, "id2label", {}) or {}
            raise UtilityError(
                f"reward model {self.path!r} has {n} labels {dict(names)}; set the option label "
                "to the index whose probability is the reward"
            )
        if label is not None and not 0 <= label < n:
            raise UtilityError(
                f"label = {label} is out of range: reward model {self.path!r} has {n} label(s) "
                f"(0..{n - 1})"
            )
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        chat = input_format == "chat" or (input_format == "auto" and has_template)
        if chat and not has_template:
            raise UtilityError(
                f"input_format = 'chat' but the tokenizer of reward model {self.path!r} has no "
                "chat template; use 'pair'"
            )
        first, second = self._texts(prompts, responses, chat)
        # Without a pad token rows cannot be padded to one width: score them one at a time.
        step = batch_size if self.tokenizer.pad_token_id is not None else 1
        out: list[float] = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(first), step):
                stop = start + step
                enc = self.tokenizer(
                    first[start:stop],
                    second[start:stop] if second is not None else None,
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    # A chat rendering already holds the template's special tokens.
                    add_special_tokens=not chat,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**enc).logits.float()
                values = logits[:, 0] if n == 1 else torch.softmax(logits, dim=-1)[:, label]
                out.extend(float(v) for v in values.tolist())
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Length of each text in the reward model's tokens (no special tokens)."""
        return [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def load_classifier_reward(path: str, dtype: Dtype, device: str) -> ClassifierReward:
    """The reward model at ``path`` (a sequence-classification folder), loaded once."""

    def load() -> ClassifierReward:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                dtype=torch_dtype(dtype),
                use_safetensors=True,
                output_loading_info=True,
            )
        except Exception as err:  # any loader failure becomes one clear message
            raise ModelError(
                f"cannot load reward model {path!r} as a sequence classifier "
                f"(AutoModelForSequenceClassification): {type(err).__name__}: {err}"
            ) from err
        # A checkpoint without a classification head (a causal LM, a bare encoder) loads with
        # a freshly, randomly initialised one: its "rewards" would be noise, different on
        # every load. Every weight must come from the checkpoint.
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            shown = ", ".join(missing[:4]) + (
                f" and {len(missing) - 4} more" if len(missing) > 4 else ""
            )
            raise ModelError(
                f"reward model {path!r} is not a sequence-classification checkpoint: its "
                f"weights lack {shown}, which would be initialised at random; give a folder "
                "saved from AutoModelForSequenceClassification (a trained reward model)"
            )
        tokenizer.padding_side = "right"
        if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        # Decoder classifiers find each row's last real token through config.pad_token_id.
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device)
        model.eval()
        return ClassifierReward(model, tokenizer, device, path)

    loaded: ClassifierReward = _cached(("reward", path, dtype, device), load)
    return loaded


class LoadsModels:
    """Mixin giving a generator with a ``device`` the :class:`swarmq.objectives.ModelLoader`
    capability: judges and reward classifiers shared by the whole process (loaded once, the
    least recently used dropped beyond ``MAX_JUDGE_MODELS``), by default on ``device``.
    """

    def load_judge(
        self, path: str, dtype: Dtype, device: str | None, batch_size: int
    ) -> JudgeModel:
        """The judge LLM at ``path`` on ``device`` (default: the evaluated model's)."""
        return load_judge(path, dtype, resolve_device(device, self), batch_size)

    def load_reward_classifier(
        self, path: str, dtype: Dtype, device: str | None
    ) -> ClassifierReward:
        """The reward classifier at ``path`` on ``device`` (default: the evaluated model's)."""
        return load_classifier_reward(path, dtype, resolve_device(device, self))
