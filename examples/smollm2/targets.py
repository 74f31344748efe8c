"""Candidate target tasks for the SmolLM2 example: is the base model above chance and above the
trivial rules on them, scored the sound way?

Builds paper-format multiple-choice files from BIG-bench task files (options shuffled with a
fixed seed: several tasks keep the right answer in a fixed place), then scores the base model
with ``multiple_choice`` in ``mode = "continuation"`` (the question alone as context, each
option scored as its continuation; as it is, per character and per token), beside chance and
the trivial rules (always the longest, the shortest, the first option; always the most frequent
gold letter), with 95 % Clopper-Pearson intervals.

The BIG-bench task files come from the ``bigbench==1.0.0`` source archive on PyPI (358 MB;
only the task files named below are extracted, and the package is not installed)::

    .venv/bin/pip download --no-deps --no-binary :all: bigbench==1.0.0 -d ~/.cache/swarmq/bigbench

Run from the repository root after ``prepare.py`` has written the base model::

    OMP_NUM_THREADS=1 .venv/bin/python examples/smollm2/targets.py --limit 100

The dataset files are written to ``--out`` (default ``~/.cache/swarmq/smollm2/targets``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from score_modes import DEFAULT_MODEL, BaseGenerator, clopper_pearson, longest, pick

DEFAULT_ARCHIVE = Path("~/.cache/swarmq/bigbench/bigbench-1.0.0.tar.gz").expanduser()
DEFAULT_OUT = Path("~/.cache/swarmq/smollm2/targets")
SHUFFLE_SEED = 0
_HYPERBATON = re.compile(r'a " (.+?) " b " (.+?) " \?')


def _plain(example: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    return example["input"], list(example["target_scores"])


def _hyperbaton(example: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    # The input lists both phrases ('a " ... " b " ... " ?'): score the phrases themselves
    # after "Look at the", not the letters.
    found = _HYPERBATON.search(example["input"])
    if not found:
        return None
    first, second = found.groups()
    order = [first, second] if list(example["target_scores"]) == ["a", "b"] else None
    if order is None:
        return None
    return "Look at the", order


#: name -> (task folder inside the archive, how an example becomes (question, options), the
#: context template the options continue).
BIGBENCH: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any], str]] = {
    "arithmetic_1_digit_addition": ("arithmetic/1_digit_addition", _plain, "{question}"),
    "general_knowledge": ("general_knowledge", _plain, "Q: {question}\nA:"),
    "hyperbaton": ("hyperbaton", _hyperbaton, "{question}"),
    "timedial": ("timedial", _plain, "{question}\n<MASK> phrase:"),
}


def _member(task: str) -> str:
    return f"bigbench-1.0.0/bigbench/benchmark_tasks/{BIGBENCH[task][0]}/task.json"


def extract_tasks(archive: Path, tasks: Sequence[str], dest: Path) -> None:
    """Extract the task files of ``tasks`` not yet in ``dest``, in one pass over the archive."""
    wanted = {_member(t): dest / f"{t}.task.json" for t in tasks}
    missing = {m: path for m, path in wanted.items() if not path.is_file()}
    if not missing:
        return
    with tarfile.open(archive) as tar:
        for info in tar:
            if info.name in missing:
                handle = tar.extractfile(info)
                if handle is not None:
                    missing.pop(info.name).write_bytes(handle.read())
            if not missing:
                return
    sys.exit(f"{sorted(missing)[0]} is not in {archive}")


def bigbench_items(task_file: Path, task: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` usable examples of a BIG-bench task, options shuffled (seeded)."""
    convert = BIGBENCH[task][1]
    data = json.loads(task_file.read_text(encoding="utf-8"))
    rng = random.Random(f"{SHUFFLE_SEED}:{task}")
    items: list[dict[str, Any]] = []
    for example in data["examples"]:
        scores = example["target_scores"]
        converted = convert(example)
        best = max(scores.values())
        if converted is None or list(scores.values()).count(best) != 1:
            continue  # unparsable, or not exactly one right option
        question, texts = converted
        gold_text = texts[list(scores.values()).index(best)]
        order = list(texts)
        rng.shuffle(order)
        letters = string.ascii_uppercase[: len(order)]
        choices = dict(zip(letters, (t.strip() for t in order), strict=True))
        answer = letters[order.index(gold_text)]
        items.append({"question": question.strip(), "choices": choices, "answer": answer})
        if len(items) == limit:
            break
    return items


def shortest(choices: Mapping[str, str]) -> str:
    """The option with the shortest text (the first of equals)."""
    return min(choices, key=lambda x: len(choices[x]))


def trivial(items: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The picks of the trivial rules (which need no model)."""
    majority = Counter(it["answer"] for it in items).most_common(1)[0][0]
    return {
        "always the longest option": [longest(it["choices"]) for it in items],
        "always the shortest option": [shortest(it["choices"]) for it in items],
        "always the first option": [next(iter(it["choices"])) for it in items],
        f"always the most frequent gold letter ({majority})": [majority] * len(items),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT.expanduser())
    parser.add_argument("--limit", type=int, default=100, help="items per task")
    parser.add_argument(
        "--tasks", default=",".join(BIGBENCH), help=f"comma-separated, of {', '.join(BIGBENCH)}"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in BIGBENCH]
    if unknown:
        sys.exit(f"unknown task {unknown[0]!r}: choose among {', '.join(BIGBENCH)}")
    if not args.archive.is_file():
        sys.exit(f"no BIG-bench archive at {args.archive}: see this script's docstring")

    import torch

    from swarmq.config import BaseModelConfig
    from swarmq.modeling import ResidentModel
    from swarmq.objectives import MultipleChoice

    torch.set_num_threads(args.threads)
    resident = ResidentModel.load(
        BaseModelConfig(path=str(args.model), dtype="float32", device="cpu"), None
    )
    generator = BaseGenerator(resident, args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    print("| task | items | options | scoring | correct | accuracy [95 % CI] |")
    print("| --- | --- | --- | --- | --- | --- |")
    extract_tasks(args.archive, tasks, args.out)
    for task in tasks:
        items = bigbench_items(args.out / f"{task}.task.json", task, args.limit)
        (args.out / f"{task}.json").write_text(
            json.dumps({"dataset": task, "dev": items, "test": []}, indent=0) + "\n",
            encoding="utf-8",
        )
        n = len(items)
        chance = sum(1 / len(it["choices"]) for it in items) / n
        options = sorted({len(it["choices"]) for it in items})
        shown = f"{options[0]}" if len(options) == 1 else f"{options[0]}-{options[-1]}"
        print(f"| {task} | {n} | {shown} | chance | | {chance:.2f} |", flush=True)
        picks = trivial(items)
        start = time.perf_counter()
        util = MultipleChoice({"mode": "continuation", "context": BIGBENCH[task][2]})
        scores = util.option_loglikelihoods(generator, items)
        for how in ("none", "chars", "tokens"):
            picks[f'continuation, normalise = "{how}"'] = [pick(s, how) for s in scores]
        seconds = time.perf_counter() - start
        for label, chosen in picks.items():
            k = sum(p == it["answer"] for p, it in zip(chosen, items, strict=True))
            low, high = clopper_pearson(k, n)
            interval = f"{k / n:.2f} [{low:.2f}, {high:.2f}]"
            print(f"| {task} | {n} | {shown} | {label} | {k}/{n} | {interval} |")
        print(f"[targets] {task}: {seconds:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
