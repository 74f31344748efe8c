"""Benchmark: evaluating positions on a resident model, alone and in mixed-adapter batches.

Measured side by side in one run, on one base model with a LoRA pool of random positions and a
multiple-choice objective (``multiple_choice``: greedy generation, letter parsing):

* (a) overhead: one evaluation through the engine (``run_evaluation`` over SQLite and a local
  artifact store, the default model hook), split into the model's own ``generate`` calls and
  everything else: artifact read and hash check, ``set_position``, tokenisation, the claim and
  record transactions. Each part is also timed on its own.
* (b) resident swap against reloading: ``set_position`` into the resident model then scoring,
  against what the reference code does for every evaluation (load the tokenizer and the base
  model, ``PeftModel.from_pretrained`` of the position's adapter folder, then the same scoring).
* (c) throughput: particles per second with ``evaluate_many`` and ``[objective]
  particles_per_batch`` K (K positions in adapter slots, one ``generate`` per step for all of
  them) against K = 1 (one position at a time); the utilities are checked to be identical.

Run from the repository root (a table in Markdown is printed at the end)::

    .venv/bin/python benchmarks/bench_eval.py                       # tiny random Llama
    .venv/bin/python benchmarks/bench_eval.py --model PATH          # a local model folder
    .venv/bin/python benchmarks/bench_eval.py --model PATH --device cuda --dtype bfloat16
    .venv/bin/python benchmarks/bench_eval.py --model PATH --random-weights   # shapes only

The questions are synthetic (deterministic, from ``--seed``) unless ``--dataset`` names a
multiple-choice file; ``--device auto`` takes CUDA when present.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from swarmq.config import SearchConfig, parse_config
from swarmq.engine import Runtime, create_search, run_evaluation
from swarmq.engine._runtime import model_evaluate
from swarmq.execution import LocalQueue
from swarmq.modeling import Evaluator, ResidentModel, clear_evaluators, get_evaluator, select_device
from swarmq.storage import Database, EvaluationRow, LocalArtifactStore, SearchRow
from swarmq.testing import char_tokenizer, save_tiny_llama
from swarmq.weights import Layout, export_adapter

WORDS = (
    "river",
    "stone",
    "cloud",
    "garden",
    "market",
    "window",
    "silver",
    "orange",
    "doctor",
    "village",
    "winter",
    "music",
    "planet",
    "engine",
    "forest",
    "bridge",
    "letter",
    "summer",
    "mirror",
    "castle",
    "ocean",
    "pencil",
    "harbor",
    "signal",
    "valley",
    "candle",
    "rocket",
    "meadow",
    "anchor",
    "basket",
    "thunder",
    "lantern",
)


# ---------------------------------------------------------------------------- set-up


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that pick the model, the questions and where they run (shared by the
    evaluation benchmarks)."""
    ap.add_argument("--model", default="tiny", help="'tiny' (built here) or a model folder")
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="use --model's config and tokenizer with random weights of the same shapes "
        "(the same speed, for a machine that lacks the weights file)",
    )
    ap.add_argument("--dataset", type=Path, help="a multiple-choice dataset file (dev split)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)


def model_folder(args: argparse.Namespace, scratch: Path) -> Path:
    """The model folder :func:`add_model_arguments` asked for; built in ``scratch`` when it is
    the tiny model or a random-weights copy."""
    if args.model == "tiny":
        # A random 2-layer Llama of width 64 with a character tokenizer (no download).
        return save_tiny_llama(scratch, char_tokenizer(), hidden_size=64)
    if args.random_weights:
        return random_weights_copy(Path(args.model).expanduser(), scratch, args.seed)
    return Path(args.model).expanduser().resolve()


def random_weights_copy(model: Path, out: Path, seed: int) -> Path:
    """``model``'s config and tokenizer files with freshly drawn weights of the same shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
    shutil.copytree(model, out, ignore=shutil.ignore_patterns(*weights))
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out)).save_pretrained(out)
    return out


def synthetic_questions(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        question = " ".join(rng.choices(WORDS, k=rng.randint(6, 18))).capitalize() + "?"
        choices = {letter: " ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for letter in "ABCD"}
        items.append({"question": question, "choices": choices, "answer": rng.choice("ABCD")})
    return items


def random_positions(
    base: Path, adapter_config: dict[str, Any], count: int, seed: int
) -> tuple[Layout, list[np.ndarray]]:
    """The pool's layout, and ``count`` random LoRA positions of a realistic scale."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**adapter_config))
    tensors = {k: v.detach().float().numpy() for k, v in get_peft_model_state_dict(model).items()}
    layout = Layout.from_shapes({k: (v.shape, "F32") for k, v in tensors.items()})
    rng = np.random.default_rng(seed)
    vectors = []
    for _ in range(count):
        parts = {}
        for key, value in tensors.items():
            # lora_A like peft's initialisation; lora_B non-zero so that positions differ.
            scale = 1.0 / np.sqrt(value.shape[-1]) if "lora_A" in key else 0.05
            parts[key] = rng.normal(0.0, scale, value.shape).astype(np.float32)
        vectors.append(layout.flatten(parts))
    return layout, vectors


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    """Accumulates the time spent inside wrapped callables."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.total = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self.total += time.perf_counter() - t0

        return timed


def median_time(fn: Callable[[], Any], repeat: int, device: str) -> float:
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------- measurements


def overhead(
    config: SearchConfig, adapter_config: dict[str, Any], root: Path, searches: int, device: str
) -> dict[str, float]:
    """(a): per-evaluation seconds through the engine, and its parts."""
    db = Database(f"sqlite:///{root / 'db.sqlite'}")
    db.check_schema(create=True)
    store = LocalArtifactStore(root / "artifacts")
    queue = LocalQueue()
    rt = Runtime(db=db, store=store, dispatcher=queue, evaluate=model_evaluate)
    particles = config.search.particles or 0

    def one_search(evaluate: Any = None) -> float:
        sid = create_search(rt, config)
        t0 = time.perf_counter()
        for p in range(particles):
            run_evaluation(rt, sid, 0, p, evaluate=evaluate)
        sync(device)
        return (time.perf_counter() - t0) / particles

    one_search()  # loads the model once (a worker's first task), warms every cache
    resident = get_evaluator(config, adapter_config)._resident
    gen_timer = Timer(device)
    plain_generate = resident.model.generate
    resident.model.generate = gen_timer.wrap(plain_generate)
    totals = [one_search() for _ in range(searches)]
    resident.model.generate = plain_generate
    per_eval = statistics.median(totals)
    in_generate = gen_timer.total / (searches * particles)

    # The parts, each on its own.
    sid = create_search(rt, config)
    with db.session() as s:
        hashes = list(
            s.scalars(select(EvaluationRow.position_hash).where(EvaluationRow.search_id == sid))
        )
        layout = Layout.from_json(s.scalars(select(SearchRow.layout_json)).first() or "")
    read = median_time(lambda: [store.get_vector(h) for h in hashes], 3, device) / len(hashes)
    evaluator = get_evaluator(config, adapter_config)
    vectors = [store.get_vector(h) for h in hashes]

    def write_all() -> None:
        for v in vectors:
            evaluator.set_position(layout, v)

    set_pos = median_time(write_all, 3, device) / len(vectors)
    prompts = evaluator.utility.prompts(evaluator.examples("dev"))  # type: ignore[attr-defined]
    tokenize = median_time(lambda: resident.tokenizer(prompts, padding=False), 5, device)

    def constant(*_: Any) -> tuple[float, dict[str, Any]]:
        return 0.0, {}

    engine = statistics.median(one_search(constant) for _ in range(3)) - read
    return {
        "per_eval": per_eval,
        "generate": in_generate,
        "outside": per_eval - in_generate,
        "read": read,
        "set_position": set_pos,
        "tokenize": tokenize,
        "engine": engine,
    }


def resident_vs_reload(
    config: SearchConfig,
    adapter_config: dict[str, Any],
    layout: Layout,
    vectors: list[np.ndarray],
    root: Path,
    reloads: int,
    device: str,
    dtype: Any,
) -> dict[str, float]:
    """(b): seconds per evaluation, resident swap against a full reload per evaluation."""
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    evaluator = get_evaluator(config, adapter_config)
    evaluator.evaluate(layout, vectors[0])  # warm
    examples = evaluator.examples("dev")
    resident_times, load_times, total_times = [], [], []
    # Alternate the two ways, so that a change of machine load affects both alike.
    for i, vector in enumerate(vectors[:reloads]):
        sync(device)
        t0 = time.perf_counter()
        kept = evaluator.evaluate(layout, vector)
        sync(device)
        resident_times.append(time.perf_counter() - t0)
        folder = export_adapter(layout, vector, root / f"adapter_{i}", adapter_config)
        sync(device)
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(config.base_model.path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        base: Any = AutoModelForCausalLM.from_pretrained(config.base_model.path, dtype=dtype)
        model = PeftModel.from_pretrained(base.to(device), folder).eval()
        sync(device)
        t1 = time.perf_counter()
        # The same scoring code as the resident path; only the way the weights arrive differs.
        fresh = ResidentModel(
            model,
            tokenizer,
            device,
            get_peft_model_state_dict(model),
            adapter=True,
            peft_config=model.peft_config["default"],
        )
        scorer = Evaluator(config, adapter_config, resident=fresh)
        reloaded = scorer.utility.score(scorer, examples)
        sync(device)
        t2 = time.perf_counter()
        load_times.append(t1 - t0)
        total_times.append(t2 - t0)
        if reloaded != kept:
            print(f"(b) position {i}: the reloaded model scores {reloaded.value}, not {kept.value}")
        del model, base, fresh, scorer
    resident = statistics.median(resident_times)
    return {
        "resident": resident,
        "reload": statistics.median(total_times),
        "reload_load": statistics.median(load_times),
    }


def throughput(
    config: SearchConfig,
    adapter_config: dict[str, Any],
    layout: Layout,
    vectors: list[np.ndarray],
    per_batch: list[int],
    rounds: int,
    device: str,
) -> dict[int, tuple[float, bool]]:
    """(c): particles per second for each K, and whether the utilities equal K = 1's.

    The values of K take turns within each round, so that a change of machine load between
    rounds affects all of them alike.
    """
    evaluators = {}
    for k in per_batch:
        objective = config.objective.model_copy(update={"particles_per_batch": k})
        evaluators[k] = get_evaluator(
            config.model_copy(update={"objective": objective}), adapter_config
        )
        evaluators[k].evaluate_many(layout, vectors[: max(k, 2)])  # warm; adds the slots
    times: dict[int, list[float]] = {k: [] for k in per_batch}
    results: dict[int, list[Any]] = {}
    for _ in range(rounds):
        for k, evaluator in evaluators.items():
            sync(device)
            t0 = time.perf_counter()
            results[k] = evaluator.evaluate_many(layout, vectors)
            sync(device)
            times[k].append(time.perf_counter() - t0)
    reference = results[per_batch[0]]
    return {
        k: (len(vectors) / statistics.median(times[k]), results[k] == reference) for k in per_batch
    }


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(ap)
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--per-batch", default="1,2,4,8", help="values of K to compare")
    ap.add_argument("--examples", type=int, default=16, help="dev questions per evaluation")
    ap.add_argument("--batch-size", type=int, default=16, help="[objective] batch_size")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank of the random pool")
    ap.add_argument("--searches", type=int, default=2, help="repeats of (a)")
    ap.add_argument("--reloads", type=int, default=3, help="evaluations timed in (b)")
    ap.add_argument("--rounds", type=int, default=3, help="repeats of (c), median taken")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = select_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    per_batch = sorted({int(k) for k in args.per_batch.split(",")} | {1})
    with tempfile.TemporaryDirectory(prefix="swarmq-bench-eval-") as tmp:
        root = Path(tmp)
        base = model_folder(args, root / "base")
        adapter_config = {
            "peft_type": "LORA",
            "r": args.rank,
            "lora_alpha": 2 * args.rank,
            "target_modules": ["q_proj", "v_proj"],
            "lora_dropout": 0.0,
            "bias": "none",
            "task_type": "CAUSAL_LM",
        }
        layout, vectors = random_positions(base, adapter_config, args.particles, args.seed)
        experts = root / "experts"
        for i, v in enumerate(vectors):
            export_adapter(layout, v, experts / f"p{i:02d}", adapter_config)
        if args.dataset:
            items = json.loads(args.dataset.read_text())["dev"][: args.examples]
        else:
            items = synthetic_questions(args.examples, args.seed)
        data = root / "questions.json"
        data.write_text(json.dumps({"dataset": "bench", "dev": items, "test": items}))
        config = parse_config(
            {
                "search": {"name": "bench", "particles": args.particles, "max_iterations": 1},
                "experts": {"path": str(experts)},
                "base_model": {"path": str(base), "dtype": args.dtype, "device": device},
                "objective": {
                    "utility": "multiple_choice",
                    "dataset": str(data),
                    "batch_size": args.batch_size,
                    "options": {"max_new_tokens": args.max_new_tokens},
                },
            }
        )
        print(
            f"model {args.model}, device {device}, dtype {args.dtype}, {args.particles} "
            f"particles, {len(items)} questions, batch_size {args.batch_size}, "
            f"max_new_tokens {args.max_new_tokens}, LoRA r={args.rank} on q_proj,v_proj "
            f"({layout.size:,} parameters), torch threads {torch.get_num_threads()}",
            flush=True,
        )
        a = overhead(config, adapter_config, root / "a", args.searches, device)
        print("(a) done", flush=True)
        b = resident_vs_reload(
            config, adapter_config, layout, vectors, root, args.reloads, device, dtype
        )
        print("(b) done", flush=True)
        c = throughput(config, adapter_config, layout, vectors, per_batch, args.rounds, device)
        clear_evaluators()

    ms = 1000.0
    print()
    print("| measurement | value | ratio |")
    print("| --- | --- | --- |")
    print(f"| (a) one evaluation through the engine | {a['per_eval'] * ms:.1f} ms | 1.00 |")
    print(
        f"| (a) inside the model's generate | {a['generate'] * ms:.1f} ms | "
        f"{a['generate'] / a['per_eval']:.3f} |"
    )
    print(
        f"| (a) everything else (overhead) | {a['outside'] * ms:.1f} ms | "
        f"{a['outside'] / a['per_eval']:.3f} |"
    )
    for key, label in (
        ("read", "artifact read + sha256 check"),
        ("set_position", "set_position"),
        ("tokenize", "tokenisation of the prompts"),
        ("engine", "claim + record transactions"),
    ):
        print(f"| (a) ... {label} | {a[key] * ms:.2f} ms | {a[key] / a['per_eval']:.4f} |")
    print(f"| (b) resident: set_position + score | {b['resident'] * ms:.1f} ms | 1.00 |")
    print(
        f"| (b) reload per evaluation (load {b['reload_load'] * ms:.0f} ms + score) | "
        f"{b['reload'] * ms:.1f} ms | {b['reload'] / b['resident']:.2f} |"
    )
    base_rate = c[1][0]
    for k, (rate, same) in c.items():
        print(
            f"| (c) particles_per_batch = {k} | {rate:.2f} particles/s"
            f"{'' if same else ' (UTILITIES DIFFER)'} | {rate / base_rate:.2f} |"
        )


if __name__ == "__main__":
    main()
