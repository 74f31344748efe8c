"""Per-item scores: every built-in utility gives one score per example, in order.

Generators return canned strings (and canned log-likelihoods), so each expected score is
written down by hand from the utility's definition. The recording of the scores with every
evaluation is tested in ``test_records.py``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swarmq.errors import UtilityError
from swarmq.objectives import (
    AbstainQA,
    ExactMatch,
    HumanInterest,
    MultipleChoice,
    RewardModel,
    UtilityResult,
    build_utility,
)

CHOICES = {"A": "London", "B": "Paris", "C": "Rome", "D": "Berlin"}


class Canned:
    """A TextGenerator answering each prompt through a function."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return [self.answer(p) for p in prompts]


class CannedLikelihood:
    """A LikelihoodScorer with given log-likelihoods per (question, continuation)."""

    def __init__(self, table: Mapping[tuple[str, str], float]) -> None:
        self.table = dict(table)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        raise AssertionError("loglik mode must not generate")

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float]:
        out = []
        for p, c in zip(prompts, continuations, strict=True):
            question = p.split("Question: ")[1].split("\n")[0]
            out.append(self.table[(question, c)])
        return out


def mc(question: str, answer: str) -> dict[str, Any]:
    return {"question": question, "choices": dict(CHOICES), "answer": answer}


def question_of(prompt: str) -> str:
    return prompt.split("Question: ")[1].split("\n")[0]


def test_result_checks_item_scores() -> None:
    r = UtilityResult(0.5, {"n": 2}, item_scores=(True, np.float64(0.0)))  # type: ignore[arg-type]
    assert r.item_scores == (1.0, 0.0) and all(type(x) is float for x in r.item_scores)
    assert UtilityResult(0.5, {"n": 2}, item_scores=tuple(np.array([1, 0], bool))).item_scores == (
        1.0,
        0.0,
    )
    with pytest.raises(UtilityError, match="item score 1 must be a finite number, got nan"):
        UtilityResult(0.5, item_scores=(1.0, math.nan))
    with pytest.raises(UtilityError, match="item score 0 must be a finite number, got 'x'"):
        UtilityResult(0.5, item_scores=("x",))  # type: ignore[arg-type]
    with pytest.raises(UtilityError, match="n = 3 examples has 2 item scores"):
        UtilityResult(0.5, {"n": 3}, item_scores=(1.0, 0.0))
    assert UtilityResult(0.5).item_scores is None  # a plug-in may give none


def test_multiple_choice_generate_and_predictions() -> None:
    examples = [mc("q1", "B"), mc("q2", "A"), mc("q3", "C")]
    answers = {"q1": " B", "q2": " C", "q3": " nothing"}
    util = MultipleChoice()
    result = util.score(Canned(lambda p: answers[question_of(p)]), examples)
    assert result.item_scores == (1.0, 0.0, 0.0)
    assert sum(result.item_scores) / 3 == result.value
    voted = util.score_predictions(["B", None, "C"], examples)
    assert voted.item_scores == (1.0, 0.0, 1.0)


def test_multiple_choice_loglik_accuracy_and_probability() -> None:
    ll = {
        ("q1", " A"): math.log(0.1),
        ("q1", " B"): math.log(0.6),
        ("q1", " C"): math.log(0.2),
        ("q1", " D"): math.log(0.1),
        ("q2", " A"): math.log(0.4),
        ("q2", " B"): math.log(0.2),
        ("q2", " C"): math.log(0.2),
        ("q2", " D"): math.log(0.2),
    }
    examples = [mc("q1", "B"), mc("q2", "C")]
    gen = CannedLikelihood(ll)
    acc = MultipleChoice({"mode": "loglik"}).score(gen, examples)
    assert acc.item_scores == (1.0, 0.0)
    prob = MultipleChoice({"mode": "loglik", "score": "prob"}).score(gen, examples)
    assert prob.item_scores == pytest.approx((0.6, 0.2))
    assert sum(prob.item_scores or ()) / 2 == pytest.approx(prob.value)


def test_exact_match_score_and_predictions() -> None:
    examples = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"}]
    util = ExactMatch()
    result = util.score(Canned(lambda p: {"1+1": "it is 2", "2+2": "5"}[p]), examples)
    assert result.item_scores == (1.0, 0.0)
    assert util.score_predictions([None, "4"], examples).item_scores == (0.0, 1.0)


def test_abstain_qa_scores_plus_one_minus_one_and_zero() -> None:
    examples = [mc("q1", "B"), mc("q2", "A"), mc("q3", "C")]
    answers = {"q1": " B", "q2": " C", "q3": " C"}
    checks = {"q1": " true", "q2": " true", "q3": " false"}

    def reply(prompt: str) -> str:
        q = question_of(prompt)
        return checks[q] if "Proposed answer:" in prompt else answers[q]

    result = AbstainQA({}).score(Canned(reply), examples)
    assert result.item_scores == (1.0, -1.0, 0.0)
    assert sum(result.item_scores) / 3 == result.value


def test_multitask_scores_each_item_by_its_task() -> None:
    util = build_utility(
        "multitask",
        {
            "tasks": {
                "quiz": {"utility": "multiple_choice", "options": {}},
                "sums": {"utility": "exact_match", "options": {"match": "whole"}},
            }
        },
    )
    examples = [
        mc("q1", "B") | {"task": "quiz"},
        {"question": "1+1", "answer": "2", "task": "sums"},
        mc("q2", "A") | {"task": "quiz"},
        {"question": "2+2", "answer": "4", "task": "sums"},
    ]
    gen = Canned(lambda p: {"1+1": "2", "2+2": "5"}.get(p) or "B")
    result = util.score(gen, examples)
    # In the examples' order: q1 right, 1+1 right, q2 wrong, 2+2 wrong.
    assert result.item_scores == (1.0, 1.0, 0.0, 0.0)
    voted = util.score_predictions(["B", "2", "A", "4"], examples)
    assert voted.item_scores == (1.0, 1.0, 1.0, 1.0)


def test_reward_model_scores_each_response(tmp_path: Path) -> None:
    scorer = tmp_path / "rm.py"
    scorer.write_text(
        textwrap.dedent(
            """
            def score(prompts, responses):
                return [len(r.split()) for r in responses]
            """
        )
    )
    examples = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]
    replies = {"a": "one two", "b": "x", "c": "w " * 9}
    util = RewardModel({"scorer": f"{scorer}:score", "reward_min": 0, "reward_max": 4})
    result = util.score(Canned(lambda p: replies[p]), examples)
    assert result.item_scores == (0.5, 0.25, 1.0)  # 9 words clipped to 1
    assert sum(result.item_scores) / 3 == pytest.approx(result.value)


def test_human_interest_unrated_item_scores_the_mean_of_the_rated() -> None:
    topics = [{"prompt": f"topic {i}"} for i in range(4)]
    ratings = ["Rating: 8/10", "Rating: 6/10", "no rating", "Rating: 4/10"]

    class Judge:
        def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
            return [ratings[int(p.split("Instruction: topic ")[1][0])] for p in prompts]

    util = HumanInterest({"judge_path": "unused", "chat_template": False})
    excluded = util.score_with_judge(Canned(lambda p: "r"), Judge(), topics)
    assert excluded.item_scores == (8.0, 6.0, 6.0, 4.0)
    assert sum(excluded.item_scores) / 4 == pytest.approx(excluded.value)
    minimum = HumanInterest({"judge_path": "unused", "chat_template": False, "unrated": "minimum"})
    assert minimum.score_with_judge(Canned(lambda p: "r"), Judge(), topics).item_scores == (
        8.0,
        6.0,
        1.0,
        4.0,
    )
