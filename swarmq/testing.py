"""Tiny offline models for tests and benchmarks: built in a second, with no download.

A random Llama with a character-level tokenizer (one token per printable character, so prompts
of every length batch at many widths), LoRA experts of it saved by peft (their keys are exactly
those of real adapter files), and multiple-choice dataset files in the paper's format. The
models know nothing; they exist to exercise the real code paths (tokenisation, padding, adapter
swaps, generation) deterministically on a CPU.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from swarmq.config import SearchConfig, parse_config
from swarmq.weights import Layout

__all__ = [
    "QUESTIONS",
    "ExpertPool",
    "char_tokenizer",
    "model_config",
    "save_lora_experts",
    "save_tiny_llama",
    "tiny_llama_config",
    "write_em_dataset",
    "write_mc_dataset",
]

#: Six multiple-choice questions of four options each, for :func:`write_mc_dataset`.
QUESTIONS: list[tuple[str, dict[str, str], str]] = [
    ("Capital of France?", {"A": "London", "B": "Paris", "C": "Rome", "D": "Berlin"}, "B"),
    ("2 + 2 = ?", {"A": "3", "B": "4", "C": "5", "D": "22"}, "B"),
    ("Largest planet?", {"A": "Mars", "B": "Venus", "C": "Jupiter", "D": "Earth"}, "C"),
    ("Water freezes at?", {"A": "0 C", "B": "50 C", "C": "100 C", "D": "-40 C"}, "A"),
    ("Color of the sky?", {"A": "green", "B": "red", "C": "yellow", "D": "blue"}, "D"),
    ("Opposite of up?", {"A": "left", "B": "down", "C": "in", "D": "out"}, "B"),
]


def char_tokenizer(
    chat_template: str | None = None, *, bos_token: bool = False, add_bos: bool = False
) -> Any:
    """A fast tokenizer with one token per printable character (and ``\\n``).

    Special tokens come first: ``<pad>`` (0), ``<eos>`` (1), ``<unk>`` (2), and with
    ``bos_token`` (or ``add_bos``) ``<bos>`` (3). ``add_bos`` prepends it to every encoding, as
    Llama tokenizers do. Decoding concatenates the characters back.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    with_bos = bos_token or add_bos
    specials = ["<pad>", "<eos>", "<unk>"] + (["<bos>"] if with_bos else [])
    vocab = {t: i for i, t in enumerate(specials + list(string.printable[:95]) + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        **({"bos_token": "<bos>"} if with_bos else {}),
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_llama_config(tokenizer: Any, *, hidden_size: int = 32, **extra: Any) -> Any:
    """A 2-layer ``LlamaConfig`` sized for ``tokenizer``, with its pad/eos/bos ids."""
    from transformers import LlamaConfig

    values: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    return LlamaConfig(**(values | extra))


def save_tiny_llama(
    folder: Path, tokenizer: Any, *, seed: int = 0, hidden_size: int = 32, **extra: Any
) -> Path:
    """Save a random :func:`tiny_llama_config` causal LM and ``tokenizer`` into ``folder``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(
        tiny_llama_config(tokenizer, hidden_size=hidden_size, **extra)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class ExpertPool:
    """What :func:`save_lora_experts` wrote: the pool's layout and each expert's flat vector."""

    folder: Path
    layout: Layout
    vectors: list[np.ndarray]
    adapter_config: dict[str, Any]


def save_lora_experts(
    base: Path,
    folder: Path,
    seeds: Mapping[str, int],
    *,
    scale: float = 1.0,
    rank: int = 4,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    **lora: Any,
) -> ExpertPool:
    """Save one random LoRA adapter of ``base`` per ``name: seed`` into ``folder/name``.

    The adapters are peft's non-zero random initialisation, multiplied by ``scale`` (a few
    times larger makes experts answer differently); ``lora`` goes to ``LoraConfig``.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load_file
    from transformers import LlamaForCausalLM

    layout: Layout | None = None
    vectors = []
    for name, seed in seeds.items():
        torch.manual_seed(seed)
        model = get_peft_model(
            LlamaForCausalLM.from_pretrained(base, use_safetensors=True),
            LoraConfig(
                r=rank, target_modules=list(target_modules), init_lora_weights=False, **lora
            ),
        )
        if scale != 1.0:
            with torch.no_grad():
                for key, p in model.named_parameters():
                    if "lora_" in key:
                        p.mul_(scale)
        model.save_pretrained(str(folder / name))
        tensors = load_file(folder / name / "adapter_model.safetensors")
        here = Layout.from_shapes({k: (v.shape, "F32") for k, v in tensors.items()})
        if layout is not None and here != layout:
            raise ValueError(f"expert {name!r} has another tensor layout than the first")
        layout = here
        vectors.append(layout.flatten(tensors))
    if layout is None:
        raise ValueError("save_lora_experts needs at least one name: seed")
    first = folder / next(iter(seeds)) / "adapter_config.json"
    return ExpertPool(folder, layout, vectors, json.loads(first.read_text()))


def write_mc_dataset(
    path: Path,
    questions: Sequence[tuple[str, Mapping[str, str], str]],
    name: str = "tiny_mc",
) -> Path:
    """Write ``(question, choices, answer)`` triples as a paper-format multiple-choice file.

    The dev split holds them in order and the test split in reverse order.
    """
    items = [{"question": q, "choices": dict(c), "answer": a} for q, c, a in questions]
    path.write_text(json.dumps({"dataset": name, "dev": items, "test": items[::-1]}))
    return path


def write_em_dataset(path: Path, n: int = 4) -> Path:
    """Write ``n`` sums (``What is 3 + 3?`` answered ``6``) as an exact-match file; the dev and
    test splits are the same items."""
    items = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]
    path.write_text(json.dumps({"dataset": "tiny_em", "dev": items, "test": items}))
    return path


def model_config(experts: Path, base: Path, **objective: Any) -> SearchConfig:
    """A search over ``experts`` of the float32 model in ``base`` on the CPU; ``objective``
    is the ``[objective]`` table (``utility``, ``dataset``, ...)."""
    return parse_config(
        {
            "experts": {"path": str(experts)},
            "base_model": {"path": str(base), "dtype": "float32", "device": "cpu"},
            "objective": objective,
        }
    )
