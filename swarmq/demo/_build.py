"""Build the demo's assets from scratch: tokenizer, tiny base model, LoRA experts, target, config.

Nothing is downloaded. A word-level tokenizer over the fixed vocabulary of :mod:`._tasks`, a tiny
Llama pretrained for a moment on every format (so it answers with a digit but masters no skill),
and one LoRA adapter per expert skill, each trained for a few seconds. Everything is seeded, so
two builds give the same weights.

The experts are trained so that mixtures of them can beat each one on the target (the headroom
the swarm needs): they share one LoRA initialisation, are held to the base model on the skills
that are not theirs, and are trained at random adapter strengths (see :class:`DemoTrainSettings`).

This module imports torch, transformers and peft; :mod:`swarmq.demo` imports it only when a build
is asked for.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swarmq.demo import DEMO_VERSION
from swarmq.demo._tasks import (
    BASE_SKILLS,
    BOS,
    EOS,
    EXPERT_SKILLS,
    PAD,
    UNK,
    VOCAB_WORDS,
    Skill,
    make_target_dataset,
    train_sequences,
)

__all__ = [
    "DEMO_VERSION",
    "SETTINGS",
    "DemoAssets",
    "DemoTrainSettings",
    "build_demo_assets",
    "build_tokenizer",
]


MARKER_NAME = ".swarmq-demo-complete"
BASE_DIR, EXPERTS_DIR = "base_model", "experts"
DATASET_NAME, CONFIG_NAME = "target.json", "search.toml"
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DemoTrainSettings:
    """Sizes, schedules and seeds of the build, tuned so that the target leaves the swarm headroom
    (see the module docstring of :mod:`swarmq.demo._tasks` for the story)."""

    seed: int = 2
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    # The base is stopped early on purpose: it has seen every skill but masters none, so each
    # expert sharpens a circuit the base already half has, and experts stay close enough in
    # weight space for their mixtures to work.
    base_steps: int = 40
    base_lr: float = 3e-3
    base_batch: int = 128
    base_expert_share: float = 0.25
    expert_steps: int = 150
    expert_lr: float = 3e-3
    expert_batch: int = 64
    # Each expert also sees the other skills and is held to the base model's answer distribution
    # on them (a KL term): it learns its own skill without rewriting the others, so a mixture of
    # experts can keep several skills at once.
    kl_weight: float = 10.0
    # Each step trains the adapter at a random strength in [min_strength, 1] (its LoRA scaling
    # times a factor), so an expert keeps its skill when the swarm mixes it with others at a
    # fraction of its weight. Without this, particles (affine mixtures of experts) would dilute
    # every skill and rarely beat the best single expert.
    min_strength: float = 0.3
    lora_r: int = 8
    lora_alpha: int = 16
    n_dev: int = 100
    n_test: int = 200
    threads: int = 2


SETTINGS = DemoTrainSettings()


@dataclass(frozen=True)
class DemoAssets:
    """Where a built demo lives."""

    root: Path
    base_model_dir: Path
    experts_dir: Path
    dataset_path: Path
    config_path: Path


def assets_at(root: Path) -> DemoAssets:
    """The asset paths under ``root`` (built or not)."""
    return DemoAssets(
        root=root,
        base_model_dir=root / BASE_DIR,
        experts_dir=root / EXPERTS_DIR,
        dataset_path=root / DATASET_NAME,
        config_path=root / CONFIG_NAME,
    )


def is_complete(root: Path) -> bool:
    """Whether ``root`` holds a finished build of this :data:`DEMO_VERSION`."""
    try:
        return (root / MARKER_NAME).read_text(encoding="utf-8").strip() == DEMO_VERSION
    except OSError:
        return False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tokenizer(out_dir: Path | None = None) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :data:`VOCAB_WORDS` that prepends ``[BOS]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # The tokenizer adds the BOS itself, so a plain tokenizer(question) call (what exact_match
    # does) gives exactly the sequences the models were trained on.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=32,
    )
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


class _Sampler:
    """Random training rows ``[BOS] skill d1..d4 = answer [EOS]`` as token id tensors.

    Rows are built from the vocabulary directly (much faster than calling the tokenizer per
    item); :meth:`check` confirms once that the tokenizer encodes the same ids.
    """

    def __init__(self, tokenizer: Any, seed: int) -> None:
        self.vocab = {w: i for i, w in enumerate(VOCAB_WORDS)}
        self.np_seqs = train_sequences(seed)
        self.seqs = torch.from_numpy(self.np_seqs)
        self.digit_ids = torch.tensor([self.vocab[str(d)] for d in range(10)])
        self.tokenizer = tokenizer

    def rows(self, skills: Sequence[Skill], n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` rows, each of a skill drawn uniformly from ``skills``."""
        pick = torch.randint(0, self.seqs.shape[0], (n,), generator=gen)
        which = torch.randint(0, len(skills), (n,), generator=gen)
        digits = self.seqs[pick]
        answers = torch.empty(n, dtype=torch.long)
        np_digits = self.np_seqs[pick.numpy()]
        for k, skill in enumerate(skills):
            sel = (which == k).numpy()
            if sel.any():
                answers[torch.from_numpy(sel)] = torch.from_numpy(skill.fn(np_digits[sel]))
        kw = torch.tensor([self.vocab[s.name] for s in skills])[which]

        def col(token_id: int) -> torch.Tensor:
            return torch.full((n, 1), token_id, dtype=torch.long)

        return torch.cat(
            [
                col(self.vocab[BOS]),
                kw[:, None],
                self.digit_ids[digits],
                col(self.vocab["="]),
                self.digit_ids[answers][:, None],
                col(self.vocab[EOS]),
            ],
            dim=1,
        )

    def check(self) -> None:
        """Fail loudly if the tokenizer would encode a prompt differently from :meth:`rows`."""
        row = self.rows(EXPERT_SKILLS[:1], 1, torch.Generator().manual_seed(0))[0].tolist()
        words = [VOCAB_WORDS[i] for i in row[1:-1]]
        enc = self.tokenizer(" ".join(words))["input_ids"]
        if enc != row[:-1]:
            raise RuntimeError(f"tokenizer encodes {words} as {enc}, expected {row[:-1]}")


def _labels(ids: torch.Tensor) -> torch.Tensor:
    """Loss on the answer digit and the EOS only: the prompt is given, not predicted."""
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    return labels


def _optimizer(model: Any, lr: float, steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters with a linear decay to 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / max(1, steps))
    return opt, sched


def build_base_model(tokenizer: Any, sampler: _Sampler, s: DemoTrainSettings = SETTINGS) -> Any:
    """A tiny Llama pretrained briefly on all formats: it answers with a digit, masters nothing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(VOCAB_WORDS),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads,
        max_position_embeddings=32,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(s.seed + 1)
    opt, sched = _optimizer(model, s.base_lr, s.base_steps)
    n_expert = int(s.base_batch * s.base_expert_share)
    model.train()
    for _ in range(s.base_steps):
        ids = torch.cat(
            [
                sampler.rows(BASE_SKILLS, s.base_batch - n_expert, gen),
                sampler.rows(EXPERT_SKILLS, n_expert, gen),
            ]
        )
        loss = model(input_ids=ids, labels=_labels(ids)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def train_demo_expert(
    base_model_dir: Path,
    sampler: _Sampler,
    skill: Skill,
    out_dir: Path,
    s: DemoTrainSettings = SETTINGS,
    *,
    stream: int = 0,
) -> None:
    """Train one LoRA adapter on ``skill`` and save it (peft format) into ``out_dir``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        base_model_dir, dtype=torch.float32, use_safetensors=True
    )
    # The same seed for every expert: all start from one lora_A, as adapters fine-tuned from a
    # shared initialisation do, so an elementwise mix of their A matrices stays meaningful.
    torch.manual_seed(s.seed)
    cfg = LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    from peft.tuners.lora import LoraLayer

    lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    full_scaling = [layer.scaling["default"] for layer in lora_layers]
    others = [*BASE_SKILLS, *(x for x in EXPERT_SKILLS if x.name != skill.name)]
    gen = torch.Generator().manual_seed(s.seed + 100 + stream)
    opt, sched = _optimizer(model, s.expert_lr, s.expert_steps)
    model.train()
    for _ in range(s.expert_steps):
        strength = s.min_strength + (1.0 - s.min_strength) * float(torch.rand((), generator=gen))
        for layer, full in zip(lora_layers, full_scaling, strict=True):
            layer.scaling["default"] = full * strength
        own = sampler.rows([skill], s.expert_batch, gen)
        rest = sampler.rows(others, s.expert_batch, gen)
        with torch.no_grad(), model.disable_adapter():
            teacher = torch.log_softmax(model(input_ids=rest[:, :-2]).logits[:, -1], dim=-1)
        ids = torch.cat([own, rest])
        labels = _labels(ids)
        labels[s.expert_batch :] = -100  # the replay rows are scored by the KL term only
        out = model(input_ids=ids, labels=labels)
        student = torch.log_softmax(out.logits[s.expert_batch :, -3], dim=-1)
        kl = torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
        loss = out.loss + s.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    for layer, full in zip(lora_layers, full_scaling, strict=True):
        layer.scaling["default"] = full
    model.eval()
    model.save_pretrained(str(out_dir))
    # Every expert must name the same base (the swarm checks that its pool agrees).
    cfg_path = out_dir / "adapter_config.json"
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = str(base_model_dir)
    cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _search_toml(**fields: Any) -> str:
    """The demo's search file: the package's ``search.toml`` template, filled in."""
    template = resources.files("swarmq.demo").joinpath("search.toml").read_text(encoding="utf-8")
    return template.format(**fields)


def _remove_build(root: Path) -> None:
    """Delete a previous (partial or outdated) build, and only the files a build writes."""
    (root / MARKER_NAME).unlink(missing_ok=True)
    for name in (BASE_DIR, EXPERTS_DIR):
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    for name in (DATASET_NAME, CONFIG_NAME):
        (root / name).unlink(missing_ok=True)


def _build_into(assets: DemoAssets, s: DemoTrainSettings, say: Callable[[str], None]) -> None:
    """Write every file of a build (all but the completion marker) under ``assets.root``."""
    _seed_everything(s.seed)
    tokenizer = build_tokenizer(assets.base_model_dir)
    sampler = _Sampler(tokenizer, s.seed)
    sampler.check()
    say("pretraining the tiny base model")
    base = build_base_model(tokenizer, sampler, s)
    base.save_pretrained(assets.base_model_dir, safe_serialization=True)
    del base

    assets.experts_dir.mkdir()
    for i, skill in enumerate(EXPERT_SKILLS):
        say(f"training expert {i + 1}/{len(EXPERT_SKILLS)}: {skill.name}")
        _seed_everything(s.seed + 10 + i)
        train_demo_expert(
            assets.base_model_dir, sampler, skill, assets.experts_dir / skill.name, s, stream=i
        )

    data = make_target_dataset(n_dev=s.n_dev, n_test=s.n_test, seed=s.seed)
    assets.dataset_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    assets.config_path.write_text(
        _search_toml(
            n=len(EXPERT_SKILLS),
            names=", ".join(x.name for x in EXPERT_SKILLS),
            experts=EXPERTS_DIR,
            base=BASE_DIR,
            dataset=DATASET_NAME,
        ),
        encoding="utf-8",
    )


def build_demo_assets(
    cache_dir: Path,
    *,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> DemoAssets:
    """Build (or reuse) the demo's base model, experts, target dataset and search file.

    ``cache_dir`` is reused as is when it holds a complete build of :data:`DEMO_VERSION` (its
    marker file is written last); otherwise, or with ``force``, the build's files in it are
    deleted and rebuilt. Other files in ``cache_dir`` are left alone.
    """
    from transformers.utils import logging as hf_logging

    say = progress or (lambda _msg: None)
    root = Path(cache_dir).expanduser().resolve()
    assets = assets_at(root)
    if not force and is_complete(root):
        say(f"reusing the demo assets in {root}")
        return assets

    root.mkdir(parents=True, exist_ok=True)
    _remove_build(root)
    s = SETTINGS
    t0 = time.perf_counter()
    bars = hf_logging.is_progress_bar_enabled()
    threads = torch.get_num_threads()
    try:
        hf_logging.disable_progress_bar()  # our own progress lines say what is happening
        # The model is tiny: more than two threads only add synchronisation; a fixed count also
        # keeps the float reductions, hence the built files, the same from machine to machine.
        torch.set_num_threads(max(1, min(s.threads, os.cpu_count() or 1)))
        with warnings.catch_warnings():
            # transformers warns about its own deprecations when peft wraps a model: not ours.
            warnings.simplefilter("ignore", FutureWarning)
            _build_into(assets, s, say)
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()
    # Written last: its presence means every file above is complete.
    (root / MARKER_NAME).write_text(DEMO_VERSION + "\n", encoding="utf-8")
    say(f"built the demo assets in {time.perf_counter() - t0:.1f}s at {root}")
    return assets
