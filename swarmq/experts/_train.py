"""Fine-tuning one LoRA expert of a base model on a training file (torch, transformers, peft).

A plain loop rather than ``transformers.Trainer``: it is short, deterministic for a seed, needs
no extra dependency, and computes the loss on the completion tokens only. The adapter is saved
with peft (``adapter_config.json`` + ``adapter_model.safetensors``) into a temporary sibling
folder that replaces the output folder at the end, so an interrupted run never leaves a
half-written expert that a pool would pick up.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from swarmq.errors import DatasetError, ModelError
from swarmq.experts._data import TrainingData, load_training_data
from swarmq.experts._settings import TRAINING_RECORD, ExpertError, TrainResult, TrainSettings
from swarmq.modeling import select_device, torch_dtype

__all__ = ["base_model_reference", "train_expert"]

# Files a training run writes into its output folder; --overwrite deletes nothing else.
_OUTPUT_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md", TRAINING_RECORD}

Progress = Callable[[int, int, float], None]


def base_model_reference(base: str | Path) -> str:
    """What an adapter records as its base: the absolute path of a local folder, else the id.

    Absolute, so that experts trained from different working directories still name the same
    base, which the swarm requires of a pool.
    """
    local = Path(base).expanduser()
    return str(local.resolve()) if local.exists() else str(base)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExpertError(f"output {str(out_dir)!r} is a file; give a folder path for the expert")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ExpertError(
            f"output folder {str(out_dir)!r} already exists and is not empty; pass --overwrite "
            "to replace the expert in it, or choose another folder"
        )
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _OUTPUT_FILES)
    if foreign:
        raise ExpertError(
            f"output folder {str(out_dir)!r} holds files a training run does not write "
            f"({foreign}); refusing to replace it: choose another folder"
        )


def _load_base(base: str, dtype: torch.dtype, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(base).expanduser()
    where = (
        f"the local path {str(local)!r} exists"
        if local.exists()
        else f"no local path {str(local)!r} exists, so it was looked up as a hub id"
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except Exception as err:  # any loader failure becomes one clear message
        raise ModelError(
            f"cannot load the tokenizer of base model {base!r}: {where}; "
            f"{type(err).__name__}: {err}"
        ) from err
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, use_safetensors=True)
    except Exception as err:
        raise ModelError(
            f"cannot load base model {base!r} as a causal language model: {where}; "
            f"{type(err).__name__}: {err}"
        ) from err
    return tokenizer, model.to(device)


def _tokenize(
    data: TrainingData, tokenizer: Any, max_length: int
) -> tuple[list[tuple[list[int], int]], int]:
    """Token ids of each pair and the length of its prompt; items over ``max_length`` skipped.

    Prompt and completion are encoded separately and concatenated: at evaluation the model
    reads exactly the prompt's encoding and continues it, so training sees the same ids.
    """
    eos = tokenizer.eos_token_id
    rows: list[tuple[list[int], int]] = []
    skipped = 0
    for ex in data.examples:
        prompt = list(tokenizer(ex.prompt)["input_ids"])
        completion = list(tokenizer(ex.completion, add_special_tokens=False)["input_ids"])
        if eos is not None:
            # Ending on EOS teaches the expert to stop after its answer, which keeps generation
            # short and the answer easy to parse.
            completion.append(eos)
        if not completion:
            raise DatasetError(f"a completion of {str(data.path)!r} encodes to no tokens")
        ids = prompt + completion
        if len(ids) > max_length:
            skipped += 1
            continue
        rows.append((ids, len(prompt)))
    return rows, skipped


def _batch(
    rows: Sequence[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (ids, n_prompt) in enumerate(rows):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[r, : len(ids)] = t
        mask[r, : len(ids)] = 1
        labels[r, n_prompt : len(ids)] = t[n_prompt:]  # loss on the completion only
    return input_ids, mask, labels


def train_expert(
    base: str | Path,
    data: str | Path,
    out_dir: str | Path,
    settings: TrainSettings | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter of ``base`` on ``data`` and save it (peft format) in ``out_dir``.

    Input is checked before the model is loaded: the data file (:class:`DatasetError`), the
    output folder (:class:`ExpertError` when it exists and ``overwrite`` is false, or holds
    files a training does not write), then the base model (:class:`ModelError`).
    ``progress(step, total, loss)`` is called after every optimizer step. Two runs with the same
    arguments on the same machine give the same adapter.
    """
    s = settings or TrainSettings()
    out = Path(out_dir)
    data_set = load_training_data(data, s.split, instruction=s.instruction)
    _check_out_dir(out, overwrite)
    device = select_device(s.device)
    base_ref = base_model_reference(base)
    tokenizer, model = _load_base(str(base), torch_dtype(s.dtype), device)

    rows, skipped = _tokenize(data_set, tokenizer, s.max_length)
    if not rows:
        raise DatasetError(
            f"every item of {str(data_set.path)!r} is longer than max_length={s.max_length} "
            "tokens; raise --max-length"
        )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(s.init_seed)
    lora = LoraConfig(
        r=s.rank,
        lora_alpha=s.alpha or 2 * s.rank,
        lora_dropout=s.dropout,
        target_modules=list(s.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = get_peft_model(model, lora)
    except ValueError as err:
        raise ModelError(
            f"cannot attach LoRA to target modules {list(s.target_modules)} of base model "
            f"{str(base)!r}: {err}"
        ) from err
    model.to(device)
    torch.manual_seed(s.seed)  # dropout draws, if any, follow the data seed

    per_epoch = math.ceil(len(rows) / s.batch_size)
    total = s.steps if s.steps is not None else per_epoch * s.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / total)
    order_gen = torch.Generator().manual_seed(s.seed)

    def batches() -> Any:
        while True:  # one shuffled pass per epoch, for as many epochs as the steps need
            order = torch.randperm(len(rows), generator=order_gen).tolist()
            for start in range(0, len(order), s.batch_size):
                yield [rows[i] for i in order[start : start + s.batch_size]]

    losses: list[float] = []
    tokens = 0
    start_time = time.perf_counter()
    model.train()
    stream = batches()
    for step in range(1, total + 1):
        batch = next(stream)
        input_ids, mask, labels = _batch(batch, pad_id)
        tokens += int(mask.sum())
        out_ = model(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
        )
        loss = out_.loss
        if not torch.isfinite(loss):
            raise ExpertError(
                f"the training loss became {loss.item()} at step {step}; lower --lr "
                f"(now {s.lr}) or use --dtype float32"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        if progress is not None:
            progress(step, total, losses[-1])
    seconds = time.perf_counter() - start_time
    model.eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    cfg_path = partial / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # peft records whatever string the model was loaded from; every expert of a pool must name
    # the same base, so record the absolute path.
    cfg["base_model_name_or_path"] = base_ref
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    window = max(1, min(10, math.ceil(total / 5)))
    result = TrainResult(
        out_dir=out,
        base_model=base_ref,
        data_name=data_set.name,
        split=data_set.split,
        examples=len(rows),
        skipped=skipped,
        steps=total,
        epochs=total * s.batch_size / len(rows),
        tokens=tokens,
        first_loss=sum(losses[:window]) / window,
        last_loss=sum(losses[-window:]) / window,
        trainable_params=sum(p.numel() for p in params),
        seconds=seconds,
    )
    record = {
        "data": str(Path(data).expanduser().resolve()),
        "formats": data_set.formats,
        "settings": s.model_dump(mode="json"),
        "result": {k: v for k, v in asdict(result).items() if k != "out_dir"},
        "losses": [round(x, 6) for x in losses],
    }
    (partial / TRAINING_RECORD).write_text(
        json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return result
