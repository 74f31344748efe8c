"""Benchmark: letter-scored multiple choice with shared rows against one row per option.

``ResidentModel.loglikelihood`` runs each (prompt, continuation) pair as the row
``context + target[:-1]`` and scores pairs with equal rows from one row, so the four letters
of a question cost one forward row. The baseline here is the plain method (one row
``context + target`` per option, the same batching and padding), measured side by side in one
run on the same questions; the log-likelihoods are checked to agree.

Run from the repository root::

    .venv/bin/python benchmarks/bench_loglik.py                         # tiny random Llama
    .venv/bin/python benchmarks/bench_loglik.py --model PATH --dataset FILE
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_eval import add_model_arguments, model_folder, sync, synthetic_questions

from swarmq.config import BaseModelConfig
from swarmq.modeling import ResidentModel
from swarmq.objectives import MultipleChoice


def one_row_per_option(
    model: ResidentModel, prompts: list[str], continuations: list[str], batch_size: int
) -> list[float]:
    """The baseline: every pair its own left-padded row ``context + target``."""
    pairs = [model._split_continuation(p, c) for p, c in zip(prompts, continuations, strict=True)]
    rows = [c + t for c, t in pairs]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [0.0] * len(rows)
    pad = model.tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(rows[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(rows[i]) :] = torch.tensor(rows[i])
                mask[row, width - len(rows[i]) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            need = max(len(pairs[i][1]) for i in batch) + 1
            logits = model.model(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                position_ids=positions.to(model.device),
                logits_to_keep=need,
            ).logits
            logprobs = torch.log_softmax(logits[:, -need:, :].float(), dim=-1)
            for row, i in enumerate(batch):
                target = torch.tensor(pairs[i][1], device=logprobs.device)
                n = target.shape[0]
                picked = logprobs[row, need - n - 1 : need - 1].gather(-1, target[:, None])
                out[i] = float(picked.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(ap)
    ap.add_argument("--examples", type=int, default=32, help="questions scored")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    ap.add_argument("--rounds", type=int, default=3, help="repeats, median taken")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(model_folder(args, Path(tmp) / "base"))
        model = ResidentModel.load(
            BaseModelConfig(path=path, dtype=args.dtype, device=args.device), None
        )
        if args.dataset:
            items: list[dict[str, Any]] = json.loads(args.dataset.read_text())["dev"]
            items = items[: args.examples]
        else:
            items = synthetic_questions(args.examples, args.seed)
        utility = MultipleChoice({"mode": "loglik"})
        prompts, conts = [], []
        for item, prompt in zip(items, utility.prompts(items), strict=True):
            for _, continuation in utility.continuations(item):
                prompts.append(prompt)
                conts.append(continuation)
        bs = args.batch_size
        methods = {
            "one row per option": lambda: one_row_per_option(model, prompts, conts, bs),
            "shared rows": lambda: model.loglikelihood(prompts, conts, bs),
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        values: dict[str, list[float]] = {}
        for name, fn in methods.items():
            values[name] = fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in methods.items():
                sync(model.device)
                t0 = time.perf_counter()
                fn()
                sync(model.device)
                times[name].append(time.perf_counter() - t0)
        gap = max(abs(a - b) for a, b in zip(*values.values(), strict=True))
        print(
            f"model {args.model}, device {model.device}, dtype {args.dtype}, "
            f"{len(items)} questions, {len(prompts)} options, batch {args.batch_size}, "
            f"largest difference {gap:.2e}\n"
        )
        base = statistics.median(times["one row per option"])
        print("| method | time | questions/s | speed-up |\n| --- | --- | --- | --- |")
        for name in methods:
            t = statistics.median(times[name])
            print(f"| {name} | {t:.3f} s | {len(items) / t:.1f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
