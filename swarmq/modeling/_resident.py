"""A base model held in memory, whose adapter (or own) weights are overwritten per position.

Loading a base model takes seconds to minutes; copying a position into it takes milliseconds.
The reference code reloaded the model for every evaluation; here the model is loaded once per
worker process and each evaluation only copies a flat vector into the existing parameters.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swarmq.config import BaseModelConfig
from swarmq.errors import LayoutError, ModelError
from swarmq.modeling._device import select_device, torch_dtype
from swarmq.weights import Layout

__all__ = ["ResidentModel"]

#: The adapter peft creates with the model; single evaluations write their position into it.
DEFAULT_ADAPTER = "default"
#: Extra adapters for mixed-adapter batches are named this plus their slot number.
SLOT_PREFIX = "swarmq_slot_"
#: The adapter ``add_weighted_adapter`` builds while merging (deleted once read).
MERGED_ADAPTER = "swarmq_merged"


def _where(path: str) -> str:
    """Say how a model path was interpreted, for load-error messages."""
    local = Path(path).expanduser()
    if local.exists():
        return f"the local path {str(local)!r} exists"
    offline = os.environ.get("HF_HUB_OFFLINE", "")
    return (
        f"no local path {str(local)!r} exists, so it was looked up as a hub id "
        f"(HF_HUB_OFFLINE={offline or 'unset'})"
    )


def _key_list(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class ResidentModel:
    """A loaded base model (optionally wrapped as a peft model) and its tokenizer.

    Positions are written in place into a fixed set of target tensors: the adapter tensors peft
    itself saves (``get_peft_model_state_dict``, keyed exactly like ``adapter_model.safetensors``)
    or, for a pool of full-weight files, the base model's own state-dict tensors. Use
    :attr:`lock` to make "set position, then generate" atomic when threads share the model.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        targets: dict[str, torch.Tensor],
        *,
        adapter: bool,
        peft_config: Any = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.targets = targets
        self.adapter = adapter
        self.lock = threading.RLock()
        self._checked: set[Layout] = set()
        # Mixed-adapter batches (one adapter per batch row) are peft's LoRA feature; a pool of
        # another adapter type, or of full-weight files, is evaluated one position at a time.
        self._peft_config = peft_config
        self.mixed = adapter and getattr(peft_config, "peft_type", None) == "LORA"
        self._slots: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, base: BaseModelConfig, adapter_config: Mapping[str, Any] | None) -> ResidentModel:
        """Load tokenizer and model from ``base.path``; wrap it with ``adapter_config`` if given.

        The environment (``HF_HUB_OFFLINE``, caches) is used as it is: a failure is reported as a
        :class:`ModelError` that names the path and whether it exists locally.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = select_device(base.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(base.path)
        except Exception as err:  # any loader failure becomes one clear message
            raise ModelError(
                f"cannot load the tokenizer of base model {base.path!r}: {_where(base.path)}; "
                f"{type(err).__name__}: {err}"
            ) from err
        # Batched generation of a decoder-only model needs the padding on the left, so that every
        # prompt's last token sits at the end of its row where generation continues.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ModelError(
                    f"the tokenizer of base model {base.path!r} has neither a pad nor an eos "
                    "token; batched generation needs one of them"
                )
            tokenizer.pad_token = tokenizer.eos_token
        dtype: Any = torch_dtype(base.dtype)
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(
                base.path, dtype=dtype, use_safetensors=True
            )
        except Exception as err:
            raise ModelError(
                f"cannot load base model {base.path!r} as a causal language model: "
                f"{_where(base.path)}; {type(err).__name__}: {err}"
            ) from err
        model.to(device)

        if adapter_config is None:
            model.eval()
            # state_dict() tensors are detached views of the parameters: writing into them writes
            # the model. Keys are those of the model's own safetensors files.
            targets = dict(model.state_dict())
            return cls(model, tokenizer, device, targets, adapter=False)

        from peft import PeftConfig, get_peft_model, get_peft_model_state_dict

        cfg = dict(adapter_config)
        cfg.setdefault("peft_type", "LORA")
        # No gradients are needed, and every adapter value is overwritten by set_position, so use
        # peft's cheapest initialisation (data-driven ones such as PiSSA would even rewrite the
        # base weights).
        cfg["inference_mode"] = True
        if "init_lora_weights" in cfg:
            cfg["init_lora_weights"] = True
        try:
            peft_config = PeftConfig.from_peft_type(**cfg)
            with warnings.catch_warnings():
                # transformers deprecation noise raised from inside peft, once per worker.
                warnings.filterwarnings("ignore", category=FutureWarning)
                model = get_peft_model(model, peft_config)
        except Exception as err:
            raise ModelError(
                f"cannot attach the pool's adapter (peft_type {cfg.get('peft_type')!r}, "
                f"target_modules {cfg.get('target_modules')!r}) to base model {base.path!r}: "
                f"{type(err).__name__}: {err}"
            ) from err
        model.to(device)
        model.eval()  # no dropout: evaluation must be deterministic
        targets = get_peft_model_state_dict(model)
        owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
        copies = [k for k, t in targets.items() if t.untyped_storage().data_ptr() not in owned]
        if copies:
            raise ModelError(
                f"peft returns copies, not the live parameters, for adapter tensors "
                f"{_key_list(copies)}; this adapter type cannot be updated in place"
            )
        return cls(model, tokenizer, device, targets, adapter=True, peft_config=peft_config)

    # ------------------------------------------------------------------ positions
    def _check_layout(self, layout: Layout) -> None:
        if layout in self._checked:
            return
        unexpected = [k for k in layout.keys if k not in self.targets]
        if unexpected:
            what = "adapter" if self.adapter else "base model"
            raise ModelError(
                f"the position has {len(unexpected)} tensor(s) the {what} does not have: "
                f"{_key_list(unexpected)}; the pool does not match the base model / adapter_config"
            )
        if self.adapter:
            # An adapter tensor the layout does not set would keep the previous position's values,
            # and a utility would depend on evaluation order.
            present = set(layout.keys)
            missing = [k for k in self.targets if k not in present]
            if missing:
                raise ModelError(
                    f"the position lacks {len(missing)} adapter tensor(s) of the model: "
                    f"{_key_list(missing)}; the pool's adapter_config does not match its weights"
                )
        for spec in layout.tensors:
            shape = tuple(self.targets[spec.key].shape)
            if shape != spec.shape:
                raise ModelError(
                    f"tensor {spec.key!r} has shape {list(spec.shape)} in the pool but "
                    f"{list(shape)} in the model"
                )
        self._checked.add(layout)

    def set_position(self, layout: Layout, vector: np.ndarray, *, slot: int | None = None) -> None:
        """Copy a flat float32 position into the target tensors, in place.

        ``slot`` None writes the default adapter (or the base model's own tensors); ``slot=i``
        writes adapter slot ``i`` of a mixed-adapter batch (see :meth:`ensure_slots`).
        """
        vec = np.asarray(vector)
        if vec.dtype != np.float32 or vec.ndim != 1 or vec.shape[0] != layout.size:
            raise LayoutError(
                f"a position of this layout is a float32 vector of {layout.size} elements, "
                f"got {vec.dtype} of shape {list(vec.shape)}"
            )
        self._check_layout(layout)
        if slot is None:
            targets = self.targets
        else:
            self._adapter_name(slot)  # raises for a slot that does not exist
            targets = self._slots[slot]
        if not vec.flags.writeable:
            vec = vec.copy()  # torch.from_numpy warns on read-only arrays (e.g. memory maps)
        with self.lock, torch.no_grad():
            # One host-to-device transfer for the whole vector, then device-side copies.
            flat = torch.from_numpy(vec).to(self.device)
            offset = 0
            for spec in layout.tensors:
                n = spec.numel
                targets[spec.key].copy_(flat[offset : offset + n].view(spec.shape))
                offset += n

    # ------------------------------------------------------------------ adapter slots
    def ensure_slots(self, count: int) -> None:
        """Give the model at least ``count`` adapter slots for mixed-adapter batches.

        A slot is one more LoRA adapter of the pool's configuration (peft ``add_adapter``);
        :meth:`set_position` with ``slot=i`` writes a position into slot ``i`` and
        :meth:`generate_mixed` runs each batch row through its request's slot. The default
        adapter stays for single evaluations. Slots are added once and kept: each costs one
        adapter's memory (small next to the base model).
        """
        if count <= len(self._slots):
            return
        if not self.mixed:
            what = "an adapter of this type" if self.adapter else "a pool of full-weight files"
            raise ModelError(
                f"mixed-adapter batches need a LoRA pool, not {what}; "
                "set [objective] particles_per_batch = 1"
            )
        from peft import get_peft_model_state_dict

        with self.lock:
            while len(self._slots) < count:
                name = f"{SLOT_PREFIX}{len(self._slots)}"
                try:
                    # A copy: peft fills in fields of the config it is given.
                    self.model.add_adapter(name, copy.deepcopy(self._peft_config))
                except Exception as err:
                    raise ModelError(
                        f"cannot add adapter slot {name!r} for a mixed-adapter batch: "
                        f"{type(err).__name__}: {err}"
                    ) from err
                targets = get_peft_model_state_dict(self.model, adapter_name=name)
                owned = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
                shapes = {k: tuple(t.shape) for k, t in targets.items()}
                if shapes != {k: tuple(t.shape) for k, t in self.targets.items()} or any(
                    t.untyped_storage().data_ptr() not in owned for t in targets.values()
                ):
                    raise ModelError(
                        f"adapter slot {name!r} does not mirror the default adapter's tensors; "
                        "this adapter cannot serve mixed-adapter batches"
                    )
                self._slots.append(targets)
            # New adapter modules are built in training mode, whose dropout is random.
            self.model.eval()

    @property
    def slots(self) -> int:
        """How many adapter slots :meth:`ensure_slots` has added so far."""
        return len(self._slots)

    def _adapter_name(self, slot: int | None) -> str | None:
        if not self.mixed:
            if slot is not None:
                raise ModelError("this model has no adapter slots (not a LoRA pool)")
            return None
        if slot is None:
            return DEFAULT_ADAPTER
        if not 0 <= slot < len(self._slots):
            raise ModelError(f"adapter slot {slot} does not exist; call ensure_slots first")
        return f"{SLOT_PREFIX}{slot}"

    # ------------------------------------------------------------------ merging
    def merge_adapters(
        self,
        layout: Layout,
        vectors: Sequence[np.ndarray],
        weights: Sequence[float],
        combination_type: str,
        density: float,
        seed: int,
    ) -> np.ndarray:
        """Merge LoRA positions with peft's ``add_weighted_adapter``; returns a position.

        The positions are written into adapter slots (:meth:`ensure_slots`), peft builds the
        merged adapter from them, its factors are brought to the pool's scaling (see
        :mod:`swarmq.modeling._merge`), and the merged adapter is read back in the layout and
        deleted. ``density`` applies to every type but ``linear``; DARE's random drops are
        drawn from ``seed``. The default adapter and its position are left as they were.
        """
        from peft import get_peft_model_state_dict
        from peft.tuners.lora import LoraLayer

        from swarmq.modeling._merge import forked

        if not self.mixed:
            what = "an adapter of this type" if self.adapter else "a pool of full-weight files"
            raise ModelError(f"add_weighted_adapter merges LoRA adapters, not {what}")
        if getattr(self._peft_config, "use_dora", False):
            raise ModelError("add_weighted_adapter cannot merge DoRA adapters (use_dora = true)")
        kwargs = {} if combination_type == "linear" else {"density": float(density)}
        # New adapter modules draw their (overwritten) initial values from torch's generator:
        # forked, so the process's random state is left alone, and seeded just before the merge,
        # so DARE's masks do not depend on whether slots had to be added first.
        with self.lock, forked(self.device):
            self.ensure_slots(len(vectors))
            for slot, vector in enumerate(vectors):
                self.set_position(layout, vector, slot=slot)
            names = [f"{SLOT_PREFIX}{slot}" for slot in range(len(vectors))]
            try:
                with torch.no_grad():
                    torch.manual_seed(seed)
                    self.model.add_weighted_adapter(
                        names,
                        [float(w) for w in weights],
                        MERGED_ADAPTER,
                        combination_type=combination_type,
                        **kwargs,
                    )
                    for module in self.model.modules():
                        if not isinstance(module, LoraLayer):
                            continue
                        root = math.sqrt(module.scaling[DEFAULT_ADAPTER])
                        for factors in (
                            module.lora_A,
                            module.lora_B,
                            module.lora_embedding_A,
                            module.lora_embedding_B,
                        ):
                            if MERGED_ADAPTER in factors:
                                merged: Any = factors[MERGED_ADAPTER]
                                getattr(merged, "weight", merged).div_(root)
                state = get_peft_model_state_dict(self.model, adapter_name=MERGED_ADAPTER)
                return layout.flatten(
                    {k: t.detach().float().cpu().numpy() for k, t in state.items()}
                )
            except (ValueError, TypeError, RuntimeError) as err:
                raise ModelError(
                    f"peft's add_weighted_adapter ({combination_type}) failed: "
                    f"{type(err).__name__}: {err}"
                ) from err
            finally:
                if MERGED_ADAPTER in self.model.peft_config:
                    self.model.delete_adapter(MERGED_ADAPTER)
                self.model.eval()

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
        """Greedy continuations of ``prompts`` (new text only, special tokens removed)."""
        return self.generate_mixed([(None, prompts)], max_new_tokens, batch_size)[0]

    def generate_mixed(
        self,
        requests: Sequence[tuple[int | None, Sequence[str]]],
        max_new_tokens: int,
        batch_size: int,
    ) -> list[list[str]]:
        """Greedy continuations for several positions at once: one ``(slot, prompts)`` each.

        ``slot`` None is the default adapter (the position :meth:`set_position` wrote without a
        slot). Each request's prompts are cut into the batches :meth:`generate` would make for it
        alone (longest first, ``batch_size`` rows, left-padded to the batch's longest prompt);
        batch j of every request of the same width then runs as one ``generate`` call with peft's
        per-row ``adapter_names``. So a row sees the same tokens, padding and adapter arithmetic
        whether its position is evaluated alone or with others; see docs/performance.md for
        what can still differ in the last bits (kernels that reduce differently per batch size).
        """
        tok = self.tokenizer
        # Particles of one objective share their first prompts: tokenize each text once.
        unique = list(dict.fromkeys(p for _, prompts in requests for p in prompts))
        encoded = (
            dict(zip(unique, tok(unique, padding=False)["input_ids"], strict=True))
            if unique
            else {}
        )
        ids = [[encoded[p] for p in prompts] for _, prompts in requests]
        names = [self._adapter_name(slot) for slot, _ in requests]
        plans = [self._batches(rows, batch_size) for rows in ids]
        out: list[list[str]] = [[""] * len(rows) for rows in ids]
        config = self._generation_config(max_new_tokens)
        with self.lock, torch.inference_mode():
            for step in range(max((len(plan) for plan in plans), default=0)):
                # Only batches of equal width share a call: no row gets extra padding.
                calls: dict[int, list[tuple[int, list[int]]]] = {}
                for r, plan in enumerate(plans):
                    if step < len(plan):
                        width = max(len(ids[r][i]) for i in plan[step])
                        calls.setdefault(width, []).append((r, plan[step]))
                for width, members in calls.items():
                    rows = [ids[r][i] for r, batch in members for i in batch]
                    row_names = [names[r] for r, batch in members for _ in batch]
                    texts = iter(self._generate_rows(rows, row_names, width, config))
                    for r, batch in members:
                        for i in batch:
                            out[r][i] = next(texts)
        return out

    @staticmethod
    def _batches(ids: list[list[int]], batch_size: int) -> list[list[int]]:
        # Prompts of similar length together (less padding); a pure function of the prompts,
        # so a given prompt list always forms the same batches.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def _generation_config(self, max_new_tokens: int) -> Any:
        from transformers import GenerationConfig

        tok = self.tokenizer
        gen_defaults = getattr(self.model, "generation_config", None)
        eos = getattr(gen_defaults, "eos_token_id", None)
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos if eos is not None else tok.eos_token_id,
        )

    def _generate_rows(
        self, rows: list[list[int]], names: list[str | None], width: int, config: Any
    ) -> list[str]:
        tok = self.tokenizer
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, seq in enumerate(rows):
            if seq:
                input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
        # A LoRA model always gets per-row adapter names, even when every row uses the default
        # adapter: peft adds a mixed batch's LoRA term in the model's dtype, a plain forward in
        # float32, which differ in half precision. One code path keeps a position's outputs the
        # same alone and in a mixed batch.
        extra: dict[str, Any] = {} if names[0] is None else {"adapter_names": names}
        generated = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            **extra,
        )
        texts: list[str] = tok.batch_decode(generated[:, width:], skip_special_tokens=True)
        return texts

    # ------------------------------------------------------------------ chat and likelihood
    def chat_prompts(self, prompts: list[str]) -> list[str]:
        """Each prompt as one user turn in the tokenizer's chat template, the reply turn opened.

        The rendered text often starts with the BOS token's text; when the tokenizer also adds
        BOS by itself, that copy is removed, so that tokenizing the text (as :meth:`generate`
        does) gives one BOS, as the template intends, not two.
        """
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ModelError(
                f"the tokenizer of {self.name_or_path!r} has no chat template; use a chat/instruct "
                "model or turn the utility's chat_template option off"
            )
        bos = tok.bos_token
        adds_bos = bool(bos) and tok("")["input_ids"][:1] == [tok.bos_token_id]
        texts: list[str] = []
        for prompt in prompts:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            if adds_bos and text.startswith(bos):
                text = text[len(bos) :]
            texts.append(text)
        return texts

    @property
    def name_or_path(self) -> str:
        """Where the model was loaded from (for messages)."""
        config = getattr(self.model, "config", None)
        return str(getattr(config, "name_or_path", "") or "the model")

    def _split_continuation(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        context: list[int] = tok(prompt)["input_ids"]
        whole: list[int] = tok(prompt + continuation)["input_ids"]
        # Tokenizing the joined text gives the tokens the model would read; take the
        # continuation's tokens from it when the prompt's tokens are its prefix. A merge across
        # the boundary (BPE joining the prompt's last characters with the continuation's first)
        # breaks that; then the continuation is tokenized on its own.
        if len(whole) > len(context) and whole[: len(context)] == context:
            target = whole[len(context) :]
        else:
            target = tok(continuation, add_special_tokens=False)["input_ids"]
        if not target:
            raise ModelError(f"the continuation {continuation!r} has no tokens to score")
        if not context:
            if tok.bos_token_id is None:
                raise ModelError(
                    "an empty prompt cannot condition a continuation: the tokenizer adds no "
                    "token to it and has no BOS token"
                )
            context = [tok.bos_token_id]
        return context, target

    def _accepts(self, argument: str) -> bool:
        import inspect

        base = self.model.get_base_model() if self.adapter else self.model
        return argument in inspect.signature(base.forward).parameters

    def loglikelihood(
        self, prompts: list[str], continuations: list[str], batch_size: int
    ) -> list[float]:
        """Sum of the log-probabilities of each continuation's tokens given its prompt.

        See :meth:`loglikelihood_tokens`, which this is without the token counts.
        """
        return [total for total, _ in self.loglikelihood_tokens(prompts, continuations, batch_size)]

    def loglikelihood_tokens(
        self, prompts: list[str], continuations: list[str], batch_size: int
    ) -> list[tuple[float, int]]:
        """Per pair, the summed log-probability of the continuation's tokens given the prompt,
        and how many tokens that is.

        Each distinct context (the prompt's tokens) is computed once: a batch of contexts runs
        left-padded, with explicit position ids, so a padded row is computed as it would be
        alone; its last position scores every continuation's first token, and its keys and
        values are kept. The remaining tokens of the continuations (a continuation's last token
        is predicted, never read) then run as rows on top of their context's cache. So the four
        endings of a question cost one context plus four short rows, and options of one token
        (letters after one prompt) cost the context alone. Deterministic: contexts and batches
        are formed from the inputs alone, as in :meth:`generate`.
        """
        if len(prompts) != len(continuations):
            raise ModelError(
                f"loglikelihood needs one continuation per prompt, got {len(prompts)} prompts "
                f"and {len(continuations)} continuations"
            )
        if not prompts:
            return []
        pairs = [
            self._split_continuation(p, c) for p, c in zip(prompts, continuations, strict=True)
        ]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (context, _) in enumerate(pairs):
            groups.setdefault(tuple(context), []).append(i)
        contexts = list(groups)
        order = sorted(range(len(contexts)), key=lambda r: -len(contexts[r]))
        keep_last = self._accepts("logits_to_keep")
        pad = self.tokenizer.pad_token_id
        out = [(0.0, 0)] * len(pairs)
        with self.lock, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(contexts[r]) for r in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, r in enumerate(batch):
                    ids = contexts[r]
                    input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    mask[row, width - len(ids) :] = 1
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                # (row in this batch, pair) of the continuations longer than one token.
                longer = [
                    (row, i)
                    for row, r in enumerate(batch)
                    for i in groups[contexts[r]]
                    if len(pairs[i][1]) > 1
                ]
                extra: dict[str, Any] = {"logits_to_keep": 1} if keep_last else {}
                result = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                    use_cache=bool(longer),
                    **extra,
                )
                first = torch.log_softmax(result.logits[:, -1, :].float(), dim=-1)
                rest: dict[int, float] = {}
                if longer:
                    # transformers 5 names the output's cache ``cache``, earlier versions
                    # ``past_key_values``.
                    cache = getattr(result, "cache", None)
                    if cache is None:
                        cache = result.past_key_values
                    rest = self._score_rest(pairs, longer, cache, mask, batch_size)
                for row, r in enumerate(batch):
                    for i in groups[contexts[r]]:
                        target = pairs[i][1]
                        head = float(first[row, target[0]].item())
                        out[i] = (head + rest.get(i, 0.0), len(target))
        return out

    def _score_rest(
        self,
        pairs: list[tuple[list[int], list[int]]],
        longer: list[tuple[int, int]],
        cache: Any,
        mask: torch.Tensor,
        batch_size: int,
    ) -> dict[int, float]:
        """Per pair of ``longer``, the summed log-probability of its continuation's tokens after
        the first, computed on top of its context's cached keys and values (``cache``, rows of
        the context batch whose padding ``mask`` has)."""
        # A continuation row reads target[:-1]; pairs of one context that read the same tokens
        # (" A", " B" under a character tokenizer) share the row.
        reads: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for row, i in longer:
            reads.setdefault((row, tuple(pairs[i][1][:-1])), []).append(i)
        # Longest first, as the contexts: rows of similar length share a batch.
        members = sorted(reads, key=lambda m: -len(m[1]))
        lengths = mask.sum(-1)
        pad = self.tokenizer.pad_token_id
        cache_arg = "cache" if self._accepts("cache") else "past_key_values"
        out: dict[int, float] = {}
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            rows = torch.tensor([row for row, _ in chunk], dtype=torch.long)
            # Right-padded: the causal mask keeps a real token from seeing the padding after it.
            width = max(len(read) for _, read in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            own = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, (_, read) in enumerate(chunk):
                input_ids[k, : len(read)] = torch.tensor(read, dtype=torch.long)
                own[k, : len(read)] = 1
            positions = lengths[rows].unsqueeze(-1) + torch.arange(width).unsqueeze(0)
            # Each chunk gets its own copy of its contexts' cache: a forward appends to it.
            past = copy.deepcopy(cache)
            past.batch_select_indices(rows.to(self.device))
            logits = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=torch.cat([mask[rows], own], dim=-1).to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                **{cache_arg: past},
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for k, key in enumerate(chunk):
                for i in reads[key]:
                    rest = pairs[i][1][1:]
                    want = torch.tensor(rest, dtype=torch.long, device=logprobs.device)
                    picked = logprobs[k, : len(rest), :].gather(-1, want.unsqueeze(-1))
                    out[i] = float(picked.sum().item())
        return out
