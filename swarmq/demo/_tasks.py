"""The synthetic skills of the demo: a fixed vocabulary, expert skills and the target task.

Every item is a prompt ``"<op> <a> <b> ="`` over single digits ``a`` and ``b`` whose answer is a
single digit token. With the demo's word-level tokenizer a prompt is always the same number of
tokens and an answer is exactly one token, so ``exact_match`` with ``max_new_tokens = 1`` scores
exactly what the model answered, nothing more.

The expert skills each teach one operation. The target task mixes several of those operations in
one dataset, so no single expert covers it: an expert answers its own share of the target and
guesses the rest, which leaves clear headroom for a combination of experts (the swarm) to beat
the best one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "BASE_SKILLS",
    "DIGITS",
    "EXPERT_SKILLS",
    "SPECIAL_TOKENS",
    "TARGET_MIX",
    "VOCAB_WORDS",
    "Skill",
    "make_target_dataset",
    "skill_items",
]

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))

# Special tokens first, so their ids (0..3) are stable whatever words are added later.
PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)


@dataclass(frozen=True)
class Skill:
    """One operation on two digits: a prompt keyword and the function giving the answer digit."""

    name: str
    keyword: str
    fn: Callable[[int, int], int]

    def prompt(self, a: int, b: int) -> str:
        """The question text, e.g. ``"add 3 5 ="``."""
        return f"{self.keyword} {a} {b} ="

    def answer(self, a: int, b: int) -> str:
        """The gold answer, one digit."""
        return str(self.fn(a, b) % 10)


# Generic skills the base model is pretrained on: they teach the answer format ("one digit after
# '='") and to attend to the operands, but none of the experts' or the target's operations.
BASE_SKILLS: tuple[Skill, ...] = (
    Skill("first", "first", lambda a, b: a),
    Skill("second", "second", lambda a, b: b),
)

# One LoRA expert per skill.
EXPERT_SKILLS: tuple[Skill, ...] = (
    Skill("add", "add", lambda a, b: a + b),
    Skill("sub", "sub", lambda a, b: a - b),
    Skill("max", "max", max),
    Skill("mul", "mul", lambda a, b: a * b),
)

# The target task: which expert operations it mixes, with their share of the items.
TARGET_MIX: tuple[tuple[str, float], ...] = (
    ("add", 0.25),
    ("sub", 0.25),
    ("max", 0.25),
    ("mul", 0.25),
)

VOCAB_WORDS: tuple[str, ...] = (
    *SPECIAL_TOKENS,
    *DIGITS,
    "=",
    *(s.keyword for s in BASE_SKILLS),
    *(s.keyword for s in EXPERT_SKILLS),
)


def skill_items(skill: Skill) -> list[tuple[str, str]]:
    """All 100 ``(question, answer)`` pairs of a skill, in a fixed order."""
    return [(skill.prompt(a, b), skill.answer(a, b)) for a in range(10) for b in range(10)]


def make_target_dataset(
    *, n_dev: int, n_test: int, seed: int, skills: Sequence[Skill] = EXPERT_SKILLS
) -> dict[str, object]:
    """The target task in the exact-match format, with disjoint dev and test splits.

    Items are drawn without replacement from the mixed operations in the proportions of
    :data:`TARGET_MIX`, so dev and test never share a question.
    """
    by_name = {s.name: s for s in skills}
    rng = random.Random(seed)
    pools: dict[str, list[tuple[str, str]]] = {}
    for name, _ in TARGET_MIX:
        items = skill_items(by_name[name])
        rng.shuffle(items)
        pools[name] = items

    def take(n: int) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        # Largest-remainder rounding keeps the split sizes exact.
        shares = [(name, w * n) for name, w in TARGET_MIX]
        counts = {name: int(x) for name, x in shares}
        left = n - sum(counts.values())
        for name, _share in sorted(shares, key=lambda t: t[1] - int(t[1]), reverse=True)[:left]:
            counts[name] += 1
        for name, _ in TARGET_MIX:
            for _ in range(counts[name]):
                q, a = pools[name].pop()
                out.append({"question": q, "answer": a})
        rng.shuffle(out)
        return out

    dev = take(n_dev)
    test = take(n_test)
    return {"dataset": "demo_target", "dev": dev, "test": test}
