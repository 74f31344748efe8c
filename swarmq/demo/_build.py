"""Build the demo's assets from scratch: tokenizer, tiny base model, LoRA experts, target, config.

Nothing is downloaded. A word-level tokenizer over the fixed vocabulary of :mod:`._tasks`, a tiny
Llama pretrained for a few seconds on generic formats, and one LoRA adapter per expert skill, each
trained for a few seconds. Everything is seeded, so two builds give the same files.

This module imports torch, transformers and peft at import time; :mod:`swarmq.demo` imports it
only when a build is asked for.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
    skill_items,
)

__all__ = ["DEMO_VERSION", "DemoAssets", "build_demo_assets"]

# Bump whenever anything that changes the built files changes: a cache holding another version is
# rebuilt rather than reused.
DEMO_VERSION = "swarmq-demo-3"

MARKER_NAME = "COMPLETE"
SEED = 1234
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainSettings:
    """Sizes and schedules of the build; module-level so tests and tuning can see them."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    base_steps: int = 300
    base_lr: float = 3e-3
    expert_steps: int = 300
    expert_lr: float = 5e-3
    batch_size: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    n_dev: int = 200
    n_test: int = 200


SETTINGS = TrainSettings()


@dataclass(frozen=True)
class DemoAssets:
    """Where a built demo lives."""

    root: Path
    base_model_dir: Path
    experts_dir: Path
    dataset_path: Path
    config_path: Path


def _assets(root: Path) -> DemoAssets:
    return DemoAssets(
        root=root,
        base_model_dir=root / "base_model",
        experts_dir=root / "experts",
        dataset_path=root / "target.json",
        config_path=root / "search.toml",
    )


def _is_complete(root: Path) -> bool:
    marker = root / MARKER_NAME
    try:
        return marker.read_text(encoding="utf-8").strip() == DEMO_VERSION
    except OSError:
        return False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tokenizer(out_dir: Path | None = None):  # -> PreTrainedTokenizerFast
    """A word-level tokenizer over :data:`VOCAB_WORDS` that prepends ``[BOS]`` to every text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # The BOS is added by the tokenizer itself, so a plain tokenizer(question) call (what the
    # exact_match utility does) gives exactly the sequence the models were trained on.
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


def _encode(tokenizer, skills: Sequence[Skill]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels for every item of ``skills``: loss only on the answer and the EOS."""
    rows: list[list[int]] = []
    for skill in skills:
        for q, a in skill_items(skill):
            ids = tokenizer(f"{q} {a}")["input_ids"] + [tokenizer.eos_token_id]
            rows.append(ids)
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:  # every prompt has the same shape, so no padding is needed
        raise RuntimeError(f"demo items have different lengths {sorted(lengths)}")
    ids = torch.tensor(rows, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    return ids, labels


def _train(
    model, ids: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float, batch: int, seed: int
) -> float:
    """A short AdamW run over minibatches of ``(ids, labels)``; returns the last loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss_val = float("nan")
    for _ in range(steps):
        idx = torch.randint(0, ids.shape[0], (min(batch, ids.shape[0]),), generator=gen)
        out = model(input_ids=ids[idx], labels=labels[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        loss_val = float(out.loss.detach())
    model.eval()
    return loss_val


def build_base_model(tokenizer, settings: TrainSettings = SETTINGS):  # -> LlamaForCausalLM
    """A tiny Llama pretrained briefly on the generic base skills (answer format, operands)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(VOCAB_WORDS),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=32,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    ids, labels = _encode(tokenizer, BASE_SKILLS)
    _train(
        model,
        ids,
        labels,
        steps=settings.base_steps,
        lr=settings.base_lr,
        batch=settings.batch_size,
        seed=SEED,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model


def train_expert(
    base_model_dir: Path,
    tokenizer,
    skill: Skill,
    out_dir: Path,
    settings: TrainSettings = SETTINGS,
    seed: int = SEED,
) -> None:
    """Train one LoRA adapter on ``skill`` and save it into ``out_dir``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    # The same seed for every expert: their LoRA A matrices start equal, as when experts are
    # fine-tuned from one shared initialisation, so averaging them is not pure noise.
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    ids, labels = _encode(tokenizer, [skill])
    _train(
        model,
        ids,
        labels,
        steps=settings.expert_steps,
        lr=settings.expert_lr,
        batch=settings.batch_size,
        seed=seed + 1,
    )
    model.save_pretrained(out_dir)
    # Every expert must name the same base, whatever peft wrote: the swarm checks they match.
    cfg_path = out_dir / "adapter_config.json"
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = str(base_model_dir)
    cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


SEARCH_TOML = """\
# The Model Swarms demo: {n} LoRA experts of a tiny Llama, searched on a target task that mixes
# their skills. Built by `swarmq demo`; paths are relative to this file.
[search]
name = "demo"
seed = 0
particles = 20
max_iterations = 30

[experts]
path = "experts"

[base_model]
path = "base_model"
dtype = "float32"
device = "cpu"

[objective]
utility = "exact_match"
dataset = "target.json"
batch_size = 64
max_new_tokens = 1
options = {{ tail_chars = 2 }}

[swarm]
# The authors' launch scripts: n = 10 experts expanded to N = 20, restart patience 0.67.
patience = 10
restart_patience = 0.67
"""


def build_demo_assets(
    cache_dir: Path,
    *,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> DemoAssets:
    """Build (or reuse) the demo's base model, experts, target dataset and search file.

    ``cache_dir`` is reused as is when it holds a complete build of :data:`DEMO_VERSION` (its
    marker file is written last); otherwise, or with ``force``, it is emptied and rebuilt.
    """
    say = progress or (lambda _msg: None)
    root = Path(cache_dir).expanduser().resolve()
    assets = _assets(root)
    if not force and _is_complete(root):
        say(f"reusing demo assets in {root}")
        return assets

    if root.exists():
        # A partial or outdated build: start over rather than trust half-written files.
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is tiny: one thread beats the overhead of several
    try:
        _seed_everything(SEED)
        tokenizer = build_tokenizer(assets.base_model_dir)
        say("pretraining the tiny base model")
        base = build_base_model(tokenizer)
        base.save_pretrained(assets.base_model_dir, safe_serialization=True)
        del base

        assets.experts_dir.mkdir()
        for i, skill in enumerate(EXPERT_SKILLS):
            say(f"training expert {i + 1}/{len(EXPERT_SKILLS)}: {skill.name}")
            _seed_everything(SEED + 100 + i)
            train_expert(assets.base_model_dir, tokenizer, skill, assets.experts_dir / skill.name)

        data = make_target_dataset(n_dev=SETTINGS.n_dev, n_test=SETTINGS.n_test, seed=SEED)
        assets.dataset_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        assets.config_path.write_text(SEARCH_TOML.format(n=len(EXPERT_SKILLS)), encoding="utf-8")
    finally:
        torch.set_num_threads(threads)
    (root / MARKER_NAME).write_text(DEMO_VERSION + "\n", encoding="utf-8")
    say(f"demo assets built in {time.perf_counter() - t0:.1f}s at {root}")
    return assets
