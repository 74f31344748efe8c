"""A base model held in memory, whose adapter (or own) weights are overwritten per position.

Loading a base model takes seconds to minutes; copying a position into it takes milliseconds.
The reference code reloaded the model for every evaluation; here the model is loaded once per
worker process and each evaluation only copies a flat vector into the existing parameters.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swarmq.config import BaseModelConfig
from swarmq.errors import LayoutError, ModelError
from swarmq.modeling._device import select_device
from swarmq.weights._layout import Layout

__all__ = ["ResidentModel"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.targets = targets
        self.adapter = adapter
        self.lock = threading.RLock()
        self._checked: set[Layout] = set()

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
        dtype: Any = "auto" if base.dtype == "auto" else _DTYPES[base.dtype]
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype)
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
        return cls(model, tokenizer, device, targets, adapter=True)

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

    def set_position(self, layout: Layout, vector: np.ndarray) -> None:
        """Copy a flat float32 position into the target tensors, in place."""
        vec = np.asarray(vector)
        if vec.dtype != np.float32 or vec.ndim != 1 or vec.shape[0] != layout.size:
            raise LayoutError(
                f"a position of this layout is a float32 vector of {layout.size} elements, "
                f"got {vec.dtype} of shape {list(vec.shape)}"
            )
        self._check_layout(layout)
        if not vec.flags.writeable:
            vec = vec.copy()  # torch.from_numpy warns on read-only arrays (e.g. memory maps)
        with self.lock, torch.no_grad():
            # One host-to-device transfer for the whole vector, then device-side copies.
            flat = torch.from_numpy(vec).to(self.device)
            offset = 0
            for spec in layout.tensors:
                n = spec.numel
                self.targets[spec.key].copy_(flat[offset : offset + n].view(spec.shape))
                offset += n

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
        """Greedy continuations of ``prompts`` (new text only, special tokens removed)."""
        if not prompts:
            return []
        from transformers import GenerationConfig

        tok = self.tokenizer
        ids: list[list[int]] = tok(list(prompts), padding=False)["input_ids"]
        # Batch prompts of similar length together (less padding); the order is a pure function
        # of the prompts, so a given prompt list always forms the same batches.
        order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
        gen_defaults = getattr(self.model, "generation_config", None)
        eos = getattr(gen_defaults, "eos_token_id", None)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos if eos is not None else tok.eos_token_id,
        )
        out: list[str] = [""] * len(prompts)
        with self.lock, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(ids[i])
                    if n:
                        input_ids[row, width - n :] = torch.tensor(ids[i], dtype=torch.long)
                        mask[row, width - n :] = 1
                generated = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                )
                texts = tok.batch_decode(generated[:, width:], skip_special_tokens=True)
                for i, text in zip(batch, texts, strict=True):
                    out[i] = text
        return out
