"""What each scoring mode of ``multiple_choice`` gives the base model on a multiple-choice file.

The same items, the same model, every way ``multiple_choice`` can score them, with 95 %
Clopper-Pearson intervals and the trivial rule "always the longest option":

- ``continuation``: the lm-evaluation-harness convention, the question alone as context and
  each option's text scored as its continuation, compared as it is (acc), per character
  (acc_norm) and per token;
- ``loglik``, ``target = "text"``: the option texts scored after the paper's prompt, which
  lists the options first (as they are, and per character);
- ``loglik``, letters: `` A`` ... `` D`` after that prompt;
- ``generate``: the paper's greedy generation and answer parsing.

Run from the repository root after ``prepare.py`` has written the base model (its first step
is enough)::

    OMP_NUM_THREADS=1 .venv/bin/python examples/smollm2/score_modes.py --limit 100

Prints a Markdown table (and the command-line arguments it ran with).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "model-swarms-eval" / "hellaswag.json"
DEFAULT_MODEL = Path("~/.cache/swarmq/smollm2/base_model").expanduser()
# The paper's instruction for Hellaswag, used by the modes whose prompt lists the options.
HELLASWAG_INSTRUCTION = "Please choose an option that best completes the sentence."


def _binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion ``k / n``, by bisection."""
    alpha = 1 - level

    def solve(f: Callable[[float], float]) -> float:
        lo, hi = 0.0, 1.0  # f is decreasing in p
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(lambda p: alpha / 2 - (1 - _binomial_cdf(k - 1, n, p)))
    high = 1.0 if k == n else solve(lambda p: _binomial_cdf(k, n, p) - alpha / 2)
    return low, high


class BaseGenerator:
    """The base model as the generator a utility scores (no adapter, whole batches)."""

    def __init__(self, resident: Any, batch_size: int) -> None:
        self.resident, self.batch_size = resident, batch_size

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        out: list[str] = self.resident.generate(prompts, max_new_tokens, self.batch_size)
        return out

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float]:
        out: list[float] = self.resident.loglikelihood(prompts, continuations, self.batch_size)
        return out

    def loglikelihood_tokens(
        self, prompts: list[str], continuations: list[str]
    ) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = self.resident.loglikelihood_tokens(
            prompts, continuations, self.batch_size
        )
        return out


def longest(choices: Mapping[str, str]) -> str:
    """The option with the longest text (the first of equals)."""
    return max(choices, key=lambda x: len(choices[x]))


def picks_by_likelihood(
    utility: Any, generator: BaseGenerator, items: Sequence[Mapping[str, Any]], hows: Sequence[str]
) -> dict[str, list[str]]:
    """Per normalisation, the option each item's log-likelihoods pick (one model pass)."""
    scores = utility.option_loglikelihoods(generator, items)
    return {how: [pick(s, how) for s in scores] for how in hows}


def pick(scores: Mapping[str, Any], how: str) -> str:
    """The option whose log-likelihood, normalised ``how``, is highest (the first of equals)."""
    return max(scores, key=lambda x: float(scores[x].normalised(how)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a multiple-choice file")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the base model folder")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--limit", type=int, default=100, help="the first N items of the split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(
            f"no model folder at {args.model}: run examples/smollm2/prepare.py first "
            "(or pass --model)"
        )

    import torch

    from swarmq.config import BaseModelConfig
    from swarmq.modeling import ResidentModel
    from swarmq.objectives import MultipleChoice, load_dataset

    torch.set_num_threads(args.threads)
    items = list(load_dataset(args.data).split(args.split))[: args.limit]
    n = len(items)
    resident = ResidentModel.load(
        BaseModelConfig(path=str(args.model), dtype="float32", device="cpu"), None
    )
    generator = BaseGenerator(resident, args.batch_size)
    listed = {"instruction": HELLASWAG_INSTRUCTION}

    rows: list[tuple[str, list[str | None], float]] = []

    def run(label: str, work: Callable[[], dict[str, list[str]] | list[str | None]]) -> None:
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        if isinstance(result, dict):
            for how, picks in result.items():
                named = f'{label}, normalise = "{how}"' if len(result) > 1 else label
                rows.append((named, list(picks), seconds))
        else:
            rows.append((label, result, seconds))
        print(f"[score_modes] {label}: {seconds:.0f} s", file=sys.stderr, flush=True)

    rows.append(("always the longest option", [longest(it["choices"]) for it in items], 0.0))
    run(
        'mode = "continuation"',
        lambda: picks_by_likelihood(
            MultipleChoice({"mode": "continuation"}),
            generator,
            items,
            ("none", "chars", "tokens"),
        ),
    )
    run(
        'mode = "loglik", target = "text"',
        lambda: picks_by_likelihood(
            MultipleChoice({"mode": "loglik", "target": "text"} | listed),
            generator,
            items,
            ("none", "chars"),
        ),
    )
    run(
        'mode = "loglik", target = "letter"',
        lambda: picks_by_likelihood(
            MultipleChoice({"mode": "loglik"} | listed), generator, items, ("none",)
        ),
    )
    run(
        'mode = "generate"',
        lambda: MultipleChoice(listed).predict(generator, items),
    )

    print(f"{args.data.name}, {args.split} items 1-{n}, {args.model.name}, {args.threads} thread")
    print()
    print("| scoring | correct | accuracy [95 % CI] | picks the longest | time |")
    print("| --- | --- | --- | --- | --- |")
    figures = []
    for label, picks, seconds in rows:
        k = sum(p == it["answer"] for p, it in zip(picks, items, strict=True))
        low, high = clopper_pearson(k, n)
        long_share = sum(p == longest(it["choices"]) for p, it in zip(picks, items, strict=True))
        print(
            f"| {label} | {k}/{n} | {k / n:.2f} [{low:.2f}, {high:.2f}] | {long_share}/{n} "
            f"| {seconds:.0f} s |"
        )
        figures.append({"scoring": label, "correct": k, "n": n, "low": low, "high": high})
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
