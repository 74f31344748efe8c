"""The synthetic skills of the demo: a fixed vocabulary, the skills and the target task.

Every item is a prompt ``"<skill> d1 d2 d3 d4 ="`` over four digits whose answer is one digit,
e.g. ``"max 3 8 1 4 ="`` -> ``"8"``. With the demo's word-level tokenizer every prompt has the same
number of tokens and every answer is exactly one token, so ``exact_match`` with
``max_new_tokens = 1`` scores exactly the digit the model chose.

The skills are small algorithms (pick a position, take the max or min), not lookup tables, so
models learn them from a few thousand random sequences and are scored on sequences they never
saw: a fixed, seeded share of all 10**4 digit sequences is reserved for the target task and never
used for training.

The story the demo tells: the base model was pretrained on all formats but masters none; each
expert masters one skill; the target mixes all expert skills in equal parts, so no expert was
trained on it and each is good on only a quarter of it. Combining experts (the swarm) can do
better than any single one.

This module needs numpy only, so it is cheap to import.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BASE_SKILLS",
    "EXPERT_SKILLS",
    "SEQ_LEN",
    "SPECIAL_TOKENS",
    "VOCAB_WORDS",
    "Skill",
    "eval_sequences",
    "make_target_dataset",
    "train_sequences",
]

SEQ_LEN = 4
N_SEQUENCES = 10**SEQ_LEN
# Share of all digit sequences reserved for the target task (dev and test), never trained on.
EVAL_SHARE = 0.2

# Special tokens first, so their ids (0..3) are stable whatever words are added later.
PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Skill:
    """One operation on a digit sequence: its prompt keyword and its answer function.

    ``fn`` maps an ``(n, SEQ_LEN)`` integer array to the ``n`` answer digits.
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]

    def prompt(self, digits: Sequence[int]) -> str:
        """The question text, e.g. ``"max 3 8 1 4 ="``."""
        return f"{self.name} {' '.join(str(int(d)) for d in digits)} ="

    def answer(self, digits: Sequence[int]) -> str:
        """The gold answer, one digit."""
        return str(int(self.fn(np.asarray([digits]))[0]))


# Generic skills the base model is pretrained on: the answer format and reading the operands.
BASE_SKILLS: tuple[Skill, ...] = (
    Skill("first", lambda x: x[:, 0]),
    Skill("last", lambda x: x[:, -1]),
)

# One LoRA expert per skill. The base sees these too, but only briefly (it masters none).
EXPERT_SKILLS: tuple[Skill, ...] = (
    Skill("max", lambda x: x.max(axis=1)),
    Skill("min", lambda x: x.min(axis=1)),
    Skill("second", lambda x: x[:, 1]),
    Skill("third", lambda x: x[:, 2]),
)

VOCAB_WORDS: tuple[str, ...] = (
    *SPECIAL_TOKENS,
    *DIGITS,
    "=",
    *(s.name for s in BASE_SKILLS),
    *(s.name for s in EXPERT_SKILLS),
)


def _all_sequences() -> np.ndarray:
    """All ``10**SEQ_LEN`` digit sequences, row ``i`` spelling ``i`` in base 10."""
    idx = np.arange(N_SEQUENCES)
    cols = [(idx // 10 ** (SEQ_LEN - 1 - k)) % 10 for k in range(SEQ_LEN)]
    return np.stack(cols, axis=1).astype(np.int64)


def _split_indices(seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(N_SEQUENCES)
    n_eval = int(N_SEQUENCES * EVAL_SHARE)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def train_sequences(seed: int) -> np.ndarray:
    """The digit sequences models may train on: every sequence not reserved for evaluation."""
    return _all_sequences()[_split_indices(seed)[0]]


def eval_sequences(seed: int) -> np.ndarray:
    """The digit sequences reserved for the target task's dev and test splits."""
    return _all_sequences()[_split_indices(seed)[1]]


def make_target_dataset(
    *, n_dev: int, n_test: int, seed: int, skills: Sequence[Skill] = EXPERT_SKILLS
) -> dict[str, object]:
    """The target task in the exact-match format, with disjoint dev and test splits.

    The skills take turns, so each has an equal share of each split (up to one item); every
    question is drawn from the reserved sequences, and no question is in both splits.
    """
    rng = random.Random(seed)
    pool = eval_sequences(seed).tolist()
    if n_dev + n_test > len(pool):
        raise ValueError(f"asked for {n_dev + n_test} items, only {len(pool)} reserved sequences")
    rng.shuffle(pool)
    items: list[dict[str, str]] = []
    for i in range(n_dev + n_test):
        skill = skills[i % len(skills)]
        digits = pool[i]
        items.append({"question": skill.prompt(digits), "answer": skill.answer(digits)})
    dev, test = items[:n_dev], items[n_dev:]
    rng.shuffle(dev)
    rng.shuffle(test)
    return {"dataset": "demo_target", "dev": dev, "test": test}
