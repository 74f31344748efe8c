"""The paper's utilities without a model: parsing, aggregation, options, data, plug-ins.

Generators here return canned strings (and canned log-likelihoods), so every number a test
expects is computed by hand from the paper's definitions. The same utilities on real tiny models
are in ``test_utility_models.py``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import textwrap
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from swarmq.config import load_config
from swarmq.errors import DatasetError, UtilityError
from swarmq.objectives import (
    AbstainQA,
    ExactMatch,
    HumanInterest,
    LikelihoodScorer,
    MultipleChoice,
    Multitask,
    RewardModel,
    Utility,
    available_utilities,
    build_prompt,
    build_utility,
    effective_reliability,
    get_utility,
    harmonic_mean,
    load_dataset,
    merge_task_files,
    option_probabilities,
    parse_rating,
)
from swarmq.objectives import _registry as _registry
from swarmq.objectives.abstain_qa import DEFAULT_CHECK_QUESTION, reflection_prompt
from swarmq.objectives.human_interest import DEFAULT_JUDGE_TEMPLATE
from swarmq.objectives.reward_model import length_score

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "model-swarms-eval"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")
CHOICES = {"A": "London", "B": "Paris", "C": "Rome", "D": "Berlin"}


class Canned:
    """A TextGenerator answering each prompt through a function; records every call."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.calls.append((list(prompts), max_new_tokens))
        return [self.answer(p) for p in prompts]


class CannedChat(Canned):
    """A Canned generator that also has a chat mode (marked in its replies)."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        super().__init__(answer)
        self.chat_calls: list[list[str]] = []

    def generate_chat(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.chat_calls.append(list(prompts))
        return [f"[chat] {self.answer(p)}" for p in prompts]


class CannedLikelihood:
    """A LikelihoodScorer with given log-likelihoods per (question, continuation)."""

    def __init__(self, table: Mapping[tuple[str, str], float]) -> None:
        self.table = dict(table)
        self.calls = 0

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        raise AssertionError("loglik mode must not generate")

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float]:
        self.calls += 1
        out = []
        for p, c in zip(prompts, continuations, strict=True):
            question = p.split("Question: ")[1].split("\n")[0]
            out.append(self.table[(question, c)])
        return out


def mc(question: str, answer: str, choices: Mapping[str, str] = CHOICES) -> dict[str, Any]:
    return {"question": question, "choices": dict(choices), "answer": answer}


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test stay in that test."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))


def test_the_papers_utilities_are_registered() -> None:
    names = set(available_utilities())
    assert {"abstain_qa", "multitask", "reward_model", "human_interest"} <= names
    assert get_utility("abstain_qa") is AbstainQA and get_utility("multitask") is Multitask
    assert get_utility("reward_model") is RewardModel
    assert get_utility("human_interest") is HumanInterest


# ---------------------------------------------------------------------------- exact match


def test_exact_match_paper_rules() -> None:
    examples = [{"question": "q1", "answer": "Yes"}, {"question": "q2", "answer": "42"}]
    outputs = {"q1": "Yes, there is a path between node 1 and node 5", "q2": "so 40 + 2 = 42 ok"}
    gen = Canned(lambda p: outputs[p])
    # Default: the last characters only; "Yes" is at the start of a long output.
    assert ExactMatch({}).score(gen, examples).metrics["correct"] == 1
    # The paper's NLGraph rule: anywhere in the output.
    assert ExactMatch({"match": "whole"}).score(gen, examples).value == 1.0
    # The paper's GSM8k rule: the last five words ("= 42 ok" are in them, "Yes" is not).
    tail5 = ExactMatch({"tail_words": 5})
    assert tail5.is_correct(outputs["q2"], "42") and not tail5.is_correct(outputs["q1"], "Yes")
    assert ExactMatch({"tail_words": 2}).is_correct("the answer is 42 ok", "42")
    assert not ExactMatch({"tail_words": 1}).is_correct("the answer is 42 ok", "42")


def test_exact_match_rules_exclusive() -> None:
    with pytest.raises(UtilityError, match="tail_chars or tail_words, not both"):
        ExactMatch({"tail_chars": 5, "tail_words": 2})
    with pytest.raises(UtilityError, match="remove tail_chars and tail_words"):
        ExactMatch({"match": "whole", "tail_words": 2})
    with pytest.raises(UtilityError, match="match = 'anywhere'"):
        ExactMatch({"match": "anywhere"})


def test_exact_match_predictions_use_the_same_rule() -> None:
    examples = [{"question": "q", "answer": "Yes"}]
    util = ExactMatch({"match": "whole"})
    gen = Canned(lambda p: "Yes, because of the edge 1-2 and 2-5")
    predicted = util.predict(gen, examples)
    assert util.score_predictions(predicted, examples).value == util.score(gen, examples).value
    assert util.score_predictions(["No"], examples).value == 0.0


# ---------------------------------------------------------------------------- multiple choice


def test_option_probabilities() -> None:
    probs = option_probabilities([math.log(1), math.log(3)])
    assert probs == pytest.approx([0.25, 0.75])
    # Shifted by the maximum: very negative log-likelihoods do not underflow to 0/0.
    assert option_probabilities([-5000.0, -5000.0 + math.log(4)]) == pytest.approx([0.2, 0.8])


def test_multiple_choice_loglik_accuracy_and_gold_probability() -> None:
    ll = {
        # q1: B is most likely (right); q2: A most likely (gold C, wrong).
        ("q1", " A"): math.log(0.1),
        ("q1", " B"): math.log(0.6),
        ("q1", " C"): math.log(0.2),
        ("q1", " D"): math.log(0.1),
        ("q2", " A"): math.log(0.02),
        ("q2", " B"): math.log(0.01),
        ("q2", " C"): math.log(0.01),
        ("q2", " D"): math.log(0.01),
    }
    examples = [mc("q1", "B"), mc("q2", "C")]
    gen = CannedLikelihood(ll)
    acc = MultipleChoice({"mode": "loglik"}).score(gen, examples)
    assert gen.calls == 1  # every option of every example in one batched call
    assert acc.value == 0.5 and acc.metrics["correct"] == 1 and acc.metrics["accuracy"] == 0.5
    assert acc.metrics["gold_prob"] == pytest.approx((0.6 + 0.2) / 2)
    assert acc.metrics["samples"][0]["predicted"] == "B"
    prob = MultipleChoice({"mode": "loglik", "score": "prob"}).score(gen, examples)
    assert prob.value == pytest.approx(0.4) and prob.metrics["accuracy"] == 0.5
    json.dumps(prob.metrics)


def test_multiple_choice_loglik_ties_text_target_and_length_normalisation() -> None:
    choices = {"A": "no", "B": "yes indeed"}
    ll = {("q", " no"): -4.0, ("q", " yes indeed"): -8.0, ("t", " A"): -1.0, ("t", " B"): -1.0}
    gen = CannedLikelihood(ll)
    text = MultipleChoice({"mode": "loglik", "target": "text"})
    assert text.predict(gen, [mc("q", "B", choices)]) == ["A"]
    # Per character: -4/3 for " no" against -8/11 for " yes indeed": B wins.
    normed = MultipleChoice({"mode": "loglik", "target": "text", "normalise": "chars"})
    assert normed.predict(gen, [mc("q", "B", choices)]) == ["B"]
    # A tie goes to the option listed first.
    letters = MultipleChoice({"mode": "loglik"})
    assert letters.predict(gen, [mc("t", "B", choices)]) == ["A"]
    examples = [mc("t", "B", choices)]
    assert letters.score_predictions(letters.predict(gen, examples), examples) == (
        letters.score_predictions(["A"], examples)
    )


class CannedTokens:
    """A TokenLikelihoodScorer with given (log-likelihood, tokens) per (context, continuation)."""

    def __init__(self, table: Mapping[tuple[str, str], tuple[float, int]]) -> None:
        self.table = dict(table)
        self.asked: list[tuple[str, str]] = []

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        raise AssertionError("continuation mode must not generate")

    def loglikelihood_tokens(
        self, prompts: list[str], continuations: list[str]
    ) -> list[tuple[float, int]]:
        self.asked += list(zip(prompts, continuations, strict=True))
        return [self.table[pc] for pc in zip(prompts, continuations, strict=True)]


# Three options that the three normalisations rank differently: as they are " no" wins (-3.0),
# per character " yes indeed" (-5.5 / 11 = -0.5), per token " maybe so" (-6.3 / 3 = -2.1).
THREE = {"A": "no", "B": "yes indeed", "C": "maybe so"}
THREE_LL = {" no": (-3.0, 1), " yes indeed": (-5.5, 2), " maybe so": (-6.3, 3)}


def test_multiple_choice_continuation_scores_options_after_the_plain_question() -> None:
    gen = CannedTokens({("q", c): v for c, v in THREE_LL.items()})
    examples = [mc("q", "C", THREE)]
    result = MultipleChoice({"mode": "continuation", "normalise": "tokens"}).score(gen, examples)
    # The context is the question alone: no instruction, no listed options.
    assert gen.asked == [("q", " no"), ("q", " yes indeed"), ("q", " maybe so")]
    assert result.value == 1.0 and result.metrics["samples"][0]["predicted"] == "C"
    assert result.metrics["accuracy_by_normalise"] == {"none": 0.0, "chars": 0.0, "tokens": 1.0}
    for how, winner in (("none", "A"), ("chars", "B"), ("tokens", "C")):
        util = MultipleChoice({"mode": "continuation", "normalise": how})
        assert util.predict(gen, examples) == [winner]
    # score = "prob": the gold option's share of the softmax over the per-token values.
    prob = MultipleChoice({"mode": "continuation", "normalise": "tokens", "score": "prob"})
    values = [-3.0, -5.5 / 2, -6.3 / 3]
    expected = math.exp(values[2]) / sum(math.exp(v) for v in values)
    assert prob.score(gen, examples).value == pytest.approx(expected)
    # A context template wraps the question, and only the question.
    wrapped = CannedTokens({("Q: q\nA:", c): v for c, v in THREE_LL.items()})
    util = MultipleChoice({"mode": "continuation", "context": "Q: {question}\nA:"})
    assert util.predict(wrapped, examples) == ["A"]
    assert {p for p, _ in wrapped.asked} == {"Q: q\nA:"}


def test_multiple_choice_continuation_options_are_checked() -> None:
    cases = [
        ({"length_normalise": True}, "write normalise = 'chars'"),
        ({"mode": "continuation", "normalise": "bytes"}, "normalise = 'bytes'"),
        ({"mode": "loglik", "context": "Q: {question}"}, "applies only to mode = 'continuation'"),
        ({"mode": "continuation", "target": "text"}, "target = 'text' applies only to mode"),
        ({"mode": "continuation", "instruction": "Pick."}, "instruction = 'Pick.' applies"),
        ({"normalise": "chars"}, "normalise = 'chars' applies only to mode = 'loglik' or"),
        ({"mode": "continuation", "context": "{question} {answer}"}, "KeyError: 'answer'"),
    ]
    for options, fragment in cases:
        with pytest.raises(UtilityError) as err:
            MultipleChoice(options)
        assert fragment in str(err.value), str(err.value)
    # Per-token comparison needs token counts: a plain LikelihoodScorer is refused by name.
    with pytest.raises(UtilityError) as err:
        MultipleChoice({"mode": "continuation"}).score(CannedLikelihood({}), [mc("q", "A")])
    msg = str(err.value)
    assert "mode = 'continuation'" in msg and "loglikelihood_tokens()" in msg
    with pytest.raises(UtilityError, match="over 0 tokens"):
        MultipleChoice({"mode": "continuation"}).score(
            CannedTokens({("q", " no"): (-1.0, 0), ("q", " yes"): (-1.0, 1)}),
            [mc("q", "A", {"A": "no", "B": "yes"})],
        )


def test_multiple_choice_loglik_needs_a_likelihood_scorer() -> None:
    gen = Canned(lambda p: "A")
    assert not isinstance(gen, LikelihoodScorer)
    with pytest.raises(UtilityError) as err:
        MultipleChoice({"mode": "loglik"}).score(gen, [mc("q", "A")])
    msg = str(err.value)
    assert "mode = 'loglik'" in msg and "loglikelihood()" in msg and "Canned" in msg


def test_multiple_choice_loglik_options_refused_in_generate_mode() -> None:
    with pytest.raises(UtilityError, match=r"score = 'prob' applies only to mode = 'loglik'"):
        MultipleChoice({"score": "prob"})
    with pytest.raises(UtilityError, match="target = 'text'"):
        MultipleChoice({"target": "text"})
    with pytest.raises(UtilityError, match="mode = 'beam'"):
        MultipleChoice({"mode": "beam"})


def test_which_utilities_can_be_ensembled() -> None:
    ok = [
        MultipleChoice({}),
        MultipleChoice({"mode": "loglik"}),
        ExactMatch({}),
        build_utility("multitask", TWO_TASKS),
    ]
    for util in ok:
        util.check_predictions()
    refused = [
        (MultipleChoice({"mode": "loglik", "score": "prob"}), "score = 'prob'"),
        (AbstainQA({}), "'abstain_qa' gives no per-example answers"),
        (HumanInterest({"judge_path": "j"}), "'human_interest' gives no per-example answers"),
        (RewardModel({"model_path": "m"}), "'reward_model' gives no per-example answers"),
        (
            build_utility(
                "multitask",
                {"tasks": {"a": {"utility": "exact_match"}, "b": {"utility": "abstain_qa"}}},
            ),
            "task 'b': utility 'abstain_qa' gives no per-example answers",
        ),
    ]
    for util, fragment in refused:
        with pytest.raises(UtilityError) as err:
            util.check_predictions()
        assert fragment in str(err.value)
        with pytest.raises(UtilityError, match="ensembled"):
            util.predict(Canned(lambda p: "A"), [mc("q", "A") | {"task": "a", "prompt": "p"}])


def test_multiple_choice_prob_score_cannot_be_ensembled() -> None:
    util = MultipleChoice({"mode": "loglik", "score": "prob"})
    with pytest.raises(UtilityError, match="cannot be ensembled"):
        util.predict(CannedLikelihood({}), [])
    with pytest.raises(UtilityError, match="score = 'accuracy'"):
        util.score_predictions(["A"], [mc("q", "A")])


def test_multiple_choice_loglik_rejects_non_finite() -> None:
    gen = CannedLikelihood({("q", " A"): -1.0, ("q", " B"): math.nan})
    with pytest.raises(UtilityError, match="option 'B' of example 0"):
        MultipleChoice({"mode": "loglik"}).score(gen, [mc("q", "A", {"A": "x", "B": "y"})])


# ---------------------------------------------------------------------------- abstain QA


def test_effective_reliability_definition() -> None:
    # answered right +1, answered wrong -1, abstained 0; mean over all questions.
    assert effective_reliability([True, False, True, False], [False, False, True, True]) == 0.0
    assert effective_reliability([True, True, False], [False, False, False]) == pytest.approx(1 / 3)
    with pytest.raises(UtilityError):
        effective_reliability([True], [])


def test_abstain_qa_with_canned_answers_and_checks() -> None:
    examples = [mc("q1", "B"), mc("q2", "A"), mc("q3", "C"), mc("q4", "D")]
    answers = {"q1": " B", "q2": " C", "q3": " C", "q4": " no idea"}
    checks = {"q1": " True.", "q2": " true", "q3": " FALSE, it is not", "q4": " true"}

    def reply(prompt: str) -> str:
        question = prompt.split("Question: ")[1].split("\n")[0]
        return checks[question] if "Proposed answer:" in prompt else answers[question]

    gen = Canned(reply)
    result = AbstainQA({}).score(gen, examples)
    # q1 answered right (+1); q2 answered wrong (-1); q3 right but abstained (0); q4 unparsed and
    # not abstained: wrong (-1).
    assert result.value == pytest.approx(-1 / 4)
    m = result.metrics
    assert (m["answered"], m["abstained"], m["answered_correct"], m["answered_wrong"]) == (
        3,
        1,
        1,
        2,
    )
    assert m["correct"] == 2 and m["unparsed"] == 1
    (first, n1), (second, n2) = gen.calls
    assert n1 == n2 == 10
    assert first[0] == build_prompt("q1", CHOICES)
    # The paper's self-check prompt, with the stripped answer.
    assert second[1] == reflection_prompt(first[1], " C")
    assert second[1].endswith(
        "The answer is\nProposed answer: C\nIs the proposed answer true or false? "
        "Directly answer with true or false."
    )
    assert DEFAULT_CHECK_QUESTION in second[0]


def test_abstain_qa_dataset_checked_like_multiple_choice(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {"dev": [mc("q", "B")], "test": [mc("q", "Z")]})
    with pytest.raises(DatasetError, match=r"test\[0\]\['answer'\] = 'Z'"):
        AbstainQA({}).check_dataset(load_dataset(path, AbstainQA.example_keys))


# ---------------------------------------------------------------------------- multitask


def test_harmonic_mean() -> None:
    assert harmonic_mean([0.5, 0.5]) == 0.5
    assert harmonic_mean([0.2, 0.8]) == pytest.approx(2 * 0.2 * 0.8 / 1.0)
    assert harmonic_mean([0.0, 0.9]) == 0.0
    assert harmonic_mean([0.3, 0.6, 0.9]) == pytest.approx(3 / (1 / 0.3 + 1 / 0.6 + 1 / 0.9))
    with pytest.raises(UtilityError, match="non-negative"):
        harmonic_mean([-0.1, 0.5])


TWO_TASKS = {
    "tasks": {
        "quiz": {"utility": "multiple_choice", "options": {"max_new_tokens": 3}},
        "sums": {"utility": "exact_match", "options": {"match": "whole"}},
    }
}


def mixed_examples() -> list[dict[str, Any]]:
    return [
        mc("q1", "B") | {"task": "quiz"},
        {"question": "1+1", "answer": "2", "task": "sums"},
        mc("q2", "A") | {"task": "quiz"},
        {"question": "2+2", "answer": "4", "task": "sums"},
        {"question": "3+3", "answer": "6", "task": "sums"},
    ]


def mixed_reply(prompt: str) -> str:
    return {"1+1": "2", "2+2": "5", "3+3": "it is 6"}.get(prompt) or "B"


def test_multitask_harmonic_mean_of_each_tasks_utility() -> None:
    util = build_utility("multitask", TWO_TASKS)
    gen = Canned(mixed_reply)
    result = util.score(gen, mixed_examples())
    quiz, sums = 1 / 2, 2 / 3  # q1 right, q2 wrong; 2 of 3 sums right
    assert result.value == pytest.approx(2 * quiz * sums / (quiz + sums))
    tasks = result.metrics["tasks"]
    assert tasks["quiz"]["value"] == quiz and tasks["sums"]["value"] == pytest.approx(sums)
    assert tasks["quiz"]["metrics"]["n"] == 2 and result.metrics["n"] == 5
    json.dumps(result.metrics)
    # Each task was generated with its own options, on its own items only.
    by_tokens = {n: p for p, n in gen.calls}
    assert by_tokens[3] == [build_prompt("q1", CHOICES), build_prompt("q2", CHOICES)]
    assert by_tokens[16] == ["1+1", "2+2", "3+3"]
    # Ensembles: per-example answers, in the examples' order, scored the same way.
    predicted = util.predict(gen, mixed_examples())
    assert predicted == ["B", "2", "B", "5", "it is 6"]
    assert util.score_predictions(predicted, mixed_examples()).value == result.value


def test_multitask_zero_task_gives_zero_and_negative_task_refused() -> None:
    util = build_utility("multitask", TWO_TASKS)
    assert util.score(Canned(lambda p: "nothing"), mixed_examples()).value == 0.0
    abstaining = build_utility(
        "multitask",
        {"tasks": {"a": {"utility": "abstain_qa"}, "b": {"utility": "multiple_choice"}}},
    )
    examples = [mc("q", "A") | {"task": "a"}, mc("q", "A") | {"task": "b"}]
    with pytest.raises(UtilityError, match=r"task 'a' has utility -1.0 < 0"):
        abstaining.score(Canned(lambda p: "B"), examples)


def test_multitask_options_errors() -> None:
    with pytest.raises(UtilityError, match="at least two tasks"):
        build_utility("multitask", {"tasks": {"x": {"utility": "exact_match"}}})
    with pytest.raises(UtilityError) as err:
        build_utility("multitask", {"tasks": {"x": {"utility": "nope"}, "y": {"utility": "nope"}}})
    assert "task 'x'" in str(err.value) and "unknown utility 'nope'" in str(err.value)
    with pytest.raises(UtilityError, match=r"(?s)task 'y'.*max_new_tokens = 0"):
        build_utility(
            "multitask",
            {
                "tasks": {
                    "x": {"utility": "exact_match"},
                    "y": {"utility": "exact_match", "options": {"max_new_tokens": 0}},
                }
            },
        )
    with pytest.raises(UtilityError, match="itself a multitask"):
        build_utility(
            "multitask",
            {
                "tasks": {
                    "x": {"utility": "multitask", "options": TWO_TASKS},
                    "y": {"utility": "exact_match"},
                }
            },
        )
    with pytest.raises(UtilityError, match=r"tasks\.x\.utilty"):
        build_utility("multitask", {"tasks": {"x": {"utilty": "a"}, "y": {"utility": "b"}}})
    # It generates nothing itself: [objective] max_new_tokens belongs to the tasks.
    with pytest.raises(UtilityError, match="remove \\[objective\\] max_new_tokens"):
        build_utility("multitask", TWO_TASKS, max_new_tokens=4)


def test_multitask_examples_cut_by_a_limit_fail_clearly() -> None:
    util = build_utility("multitask", TWO_TASKS)
    with pytest.raises(UtilityError, match=r"'sums' have no item among the 1 examples.*dev_limit"):
        util.score(Canned(mixed_reply), mixed_examples()[:1])


def test_multitask_dataset_checks(tmp_path: Path) -> None:
    util = build_utility("multitask", TWO_TASKS)

    def check(dev: list[Any], test: list[Any]) -> None:
        path = write_json(tmp_path / "m.json", {"dataset": "m", "dev": dev, "test": test})
        util.check_dataset(load_dataset(path, util.example_keys))

    good = mixed_examples()
    check(good, good)
    with pytest.raises(DatasetError, match=r"dev\[1\] has no key 'task'.*task_key"):
        check([good[0], {"question": "x", "answer": "1"}], good)
    with pytest.raises(DatasetError, match=r"test\[0\]\['task'\] = 'other' is not one of"):
        check(good, [good[0] | {"task": "other"}, *good[1:]])
    with pytest.raises(DatasetError, match="task 'quiz' has no items in the 'test' split"):
        check(good, [good[1]])
    # A task's items need that task's keys; the index is the item's index in the file.
    with pytest.raises(DatasetError, match=r"dev\[2\] has no key 'choices'"):
        check([good[0], good[1], {"question": "q", "answer": "A", "task": "quiz"}], good)
    # ... and pass that task's own checks (the answer must be a choice).
    with pytest.raises(DatasetError, match=r"task 'quiz'.*\['answer'\] = 'Z'"):
        check(good, [mc("q", "Z") | {"task": "quiz"}, good[1]])


def test_merge_task_files_interleaves_and_tags(tmp_path: Path) -> None:
    quiz = write_json(
        tmp_path / "quiz.json",
        {"dataset": "quiz", "dev": [mc(f"q{i}", "A") for i in range(3)], "test": [mc("t", "A")]},
    )
    sums = write_json(
        tmp_path / "sums.json",
        {"dev": [{"question": "1+1", "answer": "2"}], "test": [{"question": "2+2", "answer": "4"}]},
    )
    out = merge_task_files({"quiz": quiz, "sums": sums}, tmp_path / "both.json", name="both")
    data = json.loads(out.read_text())
    assert data["dataset"] == "both"
    assert [(it["task"], it["question"]) for it in data["dev"]] == [
        ("quiz", "q0"),
        ("sums", "1+1"),
        ("quiz", "q1"),
        ("quiz", "q2"),
    ]
    util = build_utility("multitask", TWO_TASKS)
    util.check_dataset(load_dataset(out, util.example_keys))
    # The first two dev items already hold both tasks: a dev_limit of 2 keeps both.
    assert util.score(Canned(mixed_reply), data["dev"][:2]).metrics["n"] == 2
    tagged = write_json(tmp_path / "tagged.json", {"dev": [{"task": 1}], "test": [{"task": 1}]})
    with pytest.raises(DatasetError, match="already has key 'task'"):
        merge_task_files({"a": tagged, "b": sums}, tmp_path / "x.json")


@needs_data
def test_multitask_on_the_papers_files(tmp_path: Path) -> None:
    # NLGraph's items already name a sub-task in "domain".
    nlgraph = build_utility(
        "multitask",
        {
            "task_key": "domain",
            "tasks": {
                "shortest_path": {"utility": "exact_match"},
                "connectivity": {"utility": "exact_match", "options": {"match": "whole"}},
            },
        },
    )
    ds = load_dataset(DATA / "nlgraph.json", nlgraph.example_keys)
    nlgraph.check_dataset(ds)
    result = nlgraph.score(Canned(lambda p: "Yes"), ds.dev[:40])
    assert result.metrics["tasks"]["shortest_path"]["value"] == 0.0 and result.value == 0.0
    # The paper's legal domain: two files merged into one.
    legal = merge_task_files(
        {
            "hearsay": DATA / "hearsay.json",
            "citation": DATA / "citation_prediction_classification.json",
        },
        tmp_path / "legal.json",
    )
    util = build_utility(
        "multitask",
        {
            "tasks": {
                "hearsay": {"utility": "multiple_choice"},
                "citation": {"utility": "multiple_choice"},
            }
        },
    )
    merged = load_dataset(legal, util.example_keys)
    util.check_dataset(merged)
    assert len(merged.dev) == 94 + 108


# ---------------------------------------------------------------------------- reward model


def write_scorer(tmp_path: Path, body: str, name: str = "rm_scorer.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


WORD_REWARD = """
    def score(prompts, responses):
        # one point per word, minus one per prompt word: a deterministic stand-in reward
        return [len(r.split()) - len(p.split()) for p, r in zip(prompts, responses)]
"""


def test_reward_model_with_a_scorer_plugin(tmp_path: Path) -> None:
    scorer = write_scorer(tmp_path, WORD_REWARD)
    examples = [{"prompt": "a b"}, {"prompt": "c"}, {"prompt": "d e f"}]
    replies = {"a b": "  one two three four  ", "c": "x", "d e f": "many " * 9}
    gen = Canned(lambda p: replies[p])
    raw = RewardModel({"scorer": f"{scorer}:score"}).score(gen, examples)
    assert raw.value == pytest.approx((2 + 0 + 6) / 3) and raw.metrics["mean_reward"] == raw.value
    assert gen.calls[0] == (["a b", "c", "d e f"], 200)  # the paper's 200 new tokens
    assert raw.metrics["samples"][0]["response"] == "one two three four"  # stripped
    norm = RewardModel({"scorer": f"{scorer}:score", "reward_min": 0, "reward_max": 4})
    result = norm.score(gen, examples)
    assert result.value == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert result.metrics["clipped_high"] == 1 and result.metrics["clipped_low"] == 0
    json.dumps(result.metrics)


def test_reward_model_length_variants(tmp_path: Path) -> None:
    scorer = write_scorer(tmp_path, WORD_REWARD)
    examples = [{"prompt": "p"}, {"prompt": "q"}]
    replies = {"p": "w " * 5, "q": "w " * 30}
    gen = Canned(lambda p: replies[p])
    base = {
        "scorer": f"{scorer}:score",
        "reward_min": 0,
        "reward_max": 40,
        "length_unit": "words",
        "length_min": 0,
        "length_max": 20,
    }
    rewards = [(5 - 1) / 40, (30 - 1) / 40]
    lengths = [5 / 20, 1.0]  # the second is clipped
    verbose = RewardModel(base | {"mode": "verbose"}).score(gen, examples)
    concise = RewardModel(base | {"mode": "concise"}).score(gen, examples)
    assert verbose.value == pytest.approx(
        sum((r + x) / 2 for r, x in zip(rewards, lengths, strict=True)) / 2
    )
    assert concise.value == pytest.approx(
        sum((r + 1 - x) / 2 for r, x in zip(rewards, lengths, strict=True)) / 2
    )
    assert verbose.metrics["mean_length"] == 17.5
    assert (
        length_score(10, 10, 201, "verbose") == 0.0 and length_score(300, 10, 201, "concise") == 0.0
    )
    chars = RewardModel(base | {"mode": "verbose", "length_unit": "chars", "length_max": 100})
    assert chars.score(gen, examples).metrics["mean_length"] == (9 + 59) / 2


def test_reward_model_chat_template_option(tmp_path: Path) -> None:
    scorer = write_scorer(tmp_path, "def score(p, r):\n    return [float(len(x)) for x in r]\n")
    util = RewardModel({"scorer": f"{scorer}:score", "chat_template": True})
    gen = CannedChat(lambda p: "abc")
    assert util.score(gen, [{"prompt": "x"}]).value == len("[chat] abc")
    assert gen.chat_calls == [["x"]] and not gen.calls
    with pytest.raises(UtilityError, match=r"chat_template = true.*generate_chat\(\)"):
        util.score(Canned(lambda p: "abc"), [{"prompt": "x"}])


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "exactly one of model_path"),
        ({"model_path": "m", "scorer": "x.py:f"}, "exactly one of model_path"),
        ({"scorer": "no_colon"}, "is not of the form"),
        ({"scorer": "missing_file.py:f"}, "scorer file 'missing_file.py' does not exist"),
        ({"model_path": "m", "reward_min": 1.0}, "both reward_min and reward_max"),
        ({"model_path": "m", "reward_min": 1.0, "reward_max": 1.0}, "must be below"),
        ({"model_path": "m", "mode": "verbose"}, "set reward_min and reward_max"),
        ({"model_path": "m", "mode": "long"}, "mode = 'long'"),
        ({"model_path": "m", "length_min": 50, "length_max": 20}, "length_min (50.0)"),
        ({"scorer": "json:loads", "label": 1}, "apply to model_path"),
        (
            {"scorer": "json:loads", "mode": "concise", "reward_min": 0, "reward_max": 1},
            "length_unit = 'tokens'",
        ),
    ],
)
def test_reward_model_bad_options(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UtilityError) as err:
        RewardModel(options)
    assert fragment in str(err.value)
    assert "accepted options" in str(err.value)


def test_reward_scorer_plugin_errors(tmp_path: Path) -> None:
    gen = Canned(lambda p: "r")
    examples = [{"prompt": "a"}, {"prompt": "b"}]
    short = write_scorer(tmp_path, "def score(p, r):\n    return [1.0]\n", "short.py")
    with pytest.raises(UtilityError, match="returned 1 rewards for 2 responses"):
        RewardModel({"scorer": f"{short}:score"}).score(gen, examples)
    nan = write_scorer(tmp_path, "def score(p, r):\n    return [1.0, float('nan')]\n", "nan.py")
    with pytest.raises(UtilityError, match="non-finite reward nan"):
        RewardModel({"scorer": f"{nan}:score"}).score(gen, examples)
    text = write_scorer(tmp_path, "def score(p, r):\n    return 'ab'\n", "text.py")
    with pytest.raises(UtilityError, match="returned str, not a list"):
        RewardModel({"scorer": f"{text}:score"}).score(gen, examples)
    const = write_scorer(tmp_path, "score = 3\n", "const.py")
    with pytest.raises(UtilityError, match="is a int, not a function"):
        RewardModel({"scorer": f"{const}:score"}).score(gen, examples)
    with pytest.raises(UtilityError, match="defines no 'scor'"):
        RewardModel({"scorer": f"{const}:scor"}).score(gen, examples)


@needs_data
def test_prompt_utilities_accept_the_papers_files(tmp_path: Path) -> None:
    for name in ("rm", "human_finance", "human_asian_food", "human_phd_application"):
        ds = load_dataset(DATA / f"{name}.json", RewardModel.example_keys)
        assert ds.dev and ds.test and all(isinstance(it["prompt"], str) for it in ds.dev)
    assert HumanInterest.example_keys == RewardModel.example_keys == ("prompt",)
    with pytest.raises(DatasetError, match=r"dev\[0\] has no key 'prompt'"):
        load_dataset(DATA / "mmlu.json", HumanInterest.example_keys)


# ---------------------------------------------------------------------------- human interest


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Rating: 7/10\nThe response is clear.", 7.0),
        ("  Rating:8 / 10", 8.0),
        ("I would say Rating: 6.5/10 overall", 6.5),
        ("Rating: 10/10", 10.0),
        ("Rating: 0/10", None),  # outside the scale
        ("Rating: 11/10", None),
        ("rating: 7/10", None),  # the asked-for format is "Rating: ?/10"
        ("I give it 7 out of 10", None),
        ("Rating: ?/10", None),
        ("", None),
    ],
)
def test_parse_rating(reply: str, rating: float | None) -> None:
    assert parse_rating(reply) == rating


def judge_of(replies: Sequence[str]) -> Canned:
    """A judge giving ``replies[i]`` to the rating prompt of the i-th topic 'topic i'."""

    def reply(prompt: str) -> str:
        topic = prompt.split("Instruction: ")[1].split("\n")[0]
        return replies[int(topic.split()[1])]

    return Canned(reply)


TOPICS = [{"prompt": f"topic {i}"} for i in range(4)]


def test_human_interest_mean_rating_and_unrated_excluded() -> None:
    gen = CannedChat(lambda p: f"answer to {p}  \n")
    judge = judge_of(["Rating: 8/10", "Rating: 6/10 good", "no rating here", "Rating: 4/10"])
    util = HumanInterest({"judge_path": "unused"})
    result = util.score_with_judge(gen, judge, TOPICS)
    assert result.value == pytest.approx((8 + 6 + 4) / 3)
    m = result.metrics
    assert m["rated"] == 3 and m["unrated"] == 1 and m["unrated_scored_as"] == "excluded"
    assert m["unrated_samples"] == ["no rating here"]
    json.dumps(m)
    # The model answered through its chat template with the paper's 512 tokens; the judge saw
    # the paper's rating prompt with the stripped response, and 20 new tokens.
    assert gen.chat_calls == [[t["prompt"] for t in TOPICS]] and not gen.calls
    ((asked, n),) = judge.calls
    assert n == 20
    assert asked[1] == DEFAULT_JUDGE_TEMPLATE.format(
        instruction="topic 1", response="[chat] answer to topic 1"
    )
    assert asked[1].startswith("For the following instruction and response, please rate")


def test_human_interest_unrated_as_minimum_as_the_paper() -> None:
    judge = judge_of(["Rating: 8/10", "bad", "Rating: 6/10", "Rating: 4/10"])
    util = HumanInterest({"judge_path": "unused", "unrated": "minimum", "chat_template": False})
    result = util.score_with_judge(Canned(lambda p: "r"), judge, TOPICS)
    assert result.value == pytest.approx((8 + 1 + 6 + 4) / 4)
    assert result.metrics["unrated_scored_as"] == "minimum (1)"
    assert result.metrics["mean_rating"] == pytest.approx(6.0)


def test_human_interest_too_many_unrated_fails() -> None:
    gen = Canned(lambda p: "r")
    judge = judge_of(["Rating: 8/10", "x", "y", "z"])
    with pytest.raises(UtilityError) as err:
        HumanInterest({"judge_path": "j", "chat_template": False}).score_with_judge(
            gen, judge, TOPICS
        )
    assert "3 of 4 replies" in str(err.value) and "'x'" in str(err.value)
    lenient = HumanInterest(
        {"judge_path": "j", "chat_template": False, "max_unrated_fraction": 0.8}
    )
    assert lenient.score_with_judge(gen, judge, TOPICS).value == 8.0
    # With every reply unrated there is nothing to average: a failure even at fraction 1.
    silent = judge_of(["-"] * 4)
    allowed = {"judge_path": "j", "chat_template": False, "max_unrated_fraction": 1.0}
    with pytest.raises(UtilityError, match="4 of 4"):
        HumanInterest(allowed).score_with_judge(gen, silent, TOPICS)
    # ... unless unrated replies are scored as the minimum, as the paper does.
    minimum = HumanInterest(allowed | {"unrated": "minimum"})
    assert minimum.score_with_judge(gen, silent, TOPICS).value == 1.0


def test_human_interest_chat_options() -> None:
    util = HumanInterest({"judge_path": "j"})
    with pytest.raises(UtilityError, match=r"chat_template = true.*generate_chat"):
        util.score_with_judge(Canned(lambda p: "r"), judge_of(["Rating: 5/10"]), TOPICS[:1])
    always = HumanInterest({"judge_path": "j", "judge_chat_template": "always"})
    with pytest.raises(UtilityError, match="judge_chat_template = 'always'"):
        always.score_with_judge(CannedChat(lambda p: "r"), judge_of(["Rating: 5/10"]), TOPICS[:1])


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "judge_path: required option is missing"),
        ({"judge_path": "j", "judge_template": "Rate {response}"}, "must contain {instruction}"),
        ({"judge_path": "j", "judge_template": "{instruction} {x} {response}"}, "KeyError"),
        ({"judge_path": "j", "unrated": "zero"}, "unrated = 'zero'"),
        ({"judge_path": "j", "max_unrated_fraction": 1.5}, "max_unrated_fraction = 1.5"),
    ],
)
def test_human_interest_bad_options(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UtilityError) as err:
        HumanInterest(options)
    assert fragment in str(err.value)


# ---------------------------------------------------------------------------- user plug-ins


PLUGIN = """
    from __future__ import annotations

    from collections.abc import Mapping, Sequence
    from typing import Any, ClassVar

    from pydantic import Field

    from swarmq.objectives import (
        TextGenerator, Utility, UtilityOptions, UtilityResult, register_utility,
    )


    class Options(UtilityOptions):
        word: str = Field("yes", description="the word to say")


    {decorator}
    class {cls}(Utility):
        example_keys: ClassVar[tuple[str, ...]] = ("prompt",)
        Options = Options

        def score(self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]):
            outs = generator.generate([e["prompt"] for e in examples], 4)
            hits = sum(self.options.word in o for o in outs)
            return UtilityResult(hits / len(outs), {{"n": len(outs)}})
"""


def write_plugin(
    tmp_path: Path, cls: str = "SaysWord", decorator: str = "", name: str = "my_utility.py"
) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(PLUGIN.format(cls=cls, decorator=decorator)), encoding="utf-8")
    return path


def test_plugin_utility_from_a_file(tmp_path: Path, fresh_registry: None) -> None:
    path = write_plugin(tmp_path)
    cls = get_utility(f"{path}:SaysWord")
    assert cls.name == "says_word" and get_utility("says_word") is cls
    assert get_utility(f"{path}:SaysWord") is cls  # imported once, not re-run
    util = build_utility(f"{path}:SaysWord", {"word": "ok"})
    assert util.score(Canned(lambda p: "ok!"), [{"prompt": "x"}]).value == 1.0
    with pytest.raises(UtilityError, match="wrod = 'ok': unknown option"):
        build_utility(f"{path}:SaysWord", {"wrod": "ok"})


def test_plugin_utility_keeps_its_registered_name(tmp_path: Path, fresh_registry: None) -> None:
    path = write_plugin(tmp_path, decorator='@register_utility("parrot")')
    assert get_utility(f"{path}:SaysWord").name == "parrot"
    assert "parrot" in available_utilities()


def test_plugin_utility_from_a_module(
    tmp_path: Path, fresh_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_plugin(tmp_path, cls="ModuleWord", name="my_module_utility.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert get_utility("my_module_utility:ModuleWord").name == "module_word"
    finally:
        sys.modules.pop("my_module_utility", None)


def test_plugin_utility_errors(tmp_path: Path, fresh_registry: None) -> None:
    def error(spec: str) -> str:
        with pytest.raises(UtilityError) as err:
            get_utility(spec)
        return str(err.value)

    missing = tmp_path / "nope.py"
    assert f"the file {str(missing)!r} does not exist" in error(f"{missing}:X")
    path = write_plugin(tmp_path)
    msg = error(f"{path}:Nope")
    assert "defines no 'Nope'" in msg and "SaysWord" in msg
    assert "'Options' is the class Options, not a subclass" in error(f"{path}:Options")
    assert "'Field' is function, not a subclass" in error(f"{path}:Field")
    assert "is not of the form" in error(f"{path}:")
    assert "no module named 'no_such_module_xyz'" in error("no_such_module_xyz:Thing")
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n", encoding="utf-8")
    assert "importing" in error(f"{broken}:X") and "SyntaxError" in error(f"{broken}:X")
    abstract = tmp_path / "abstract.py"
    abstract.write_text("from swarmq.objectives import Utility\nclass Half(Utility):\n    pass\n")
    assert "Half does not implement score" in error(f"{abstract}:Half")


def test_plugin_utility_name_clash(tmp_path: Path, fresh_registry: None) -> None:
    decorated = write_plugin(
        tmp_path, decorator='@register_utility("multiple_choice")', name="clash1.py"
    )
    with pytest.raises(UtilityError) as err:
        get_utility(f"{decorated}:SaysWord")
    msg = str(err.value)
    assert "'multiple_choice' is already registered by" in msg and "clash1.py" in msg
    undecorated = write_plugin(tmp_path, cls="MultipleChoice", name="clash2.py")
    with pytest.raises(UtilityError) as err:
        get_utility(f"{undecorated}:MultipleChoice")
    msg = str(err.value)
    assert "'multiple_choice' is already registered" in msg
    # A failed import leaves nothing behind: the built-in is untouched.
    assert get_utility("multiple_choice") is MultipleChoice


def test_plugin_subclass_of_a_builtin_gets_its_own_name(
    tmp_path: Path, fresh_registry: None
) -> None:
    path = tmp_path / "strict_mc.py"
    path.write_text(
        "from swarmq.objectives import MultipleChoice\n"
        "class StrictChoice(MultipleChoice):\n"
        "    pass\n",
        encoding="utf-8",
    )
    cls = get_utility(f"{path}:StrictChoice")
    assert cls.name == "strict_choice" and issubclass(cls, Utility)
    assert get_utility("multiple_choice") is MultipleChoice


# ---------------------------------------------------------------------------- config paths


def test_config_resolves_plugin_files_and_model_folders(tmp_path: Path) -> None:
    folder = tmp_path / "search"
    (folder / "plugins").mkdir(parents=True)
    (folder / "models" / "judge").mkdir(parents=True)
    write_plugin(folder / "plugins")
    (folder / "plugins" / "rm.py").write_text("def score(p, r):\n    return [0.0] * len(r)\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "rm.py").write_text("")
    (folder / "data.json").write_text("{}")
    (folder / "search.toml").write_text(
        textwrap.dedent(
            """
            [experts]
            path = "experts"
            [base_model]
            path = "org/base"
            [objective]
            utility = "plugins/my_utility.py:SaysWord"
            dataset = "data.json"
            [objective.options]
            judge_path = "models/judge"
            reward_path = "org/reward-model"
            scorer = "plugins/rm.py:score"
            module_scorer = "my_package.rewards:score"
            text = "models/judge"
            instruction = "Answer as plugins/helper.py:main would."
            missing = "plugins/missing.py:score"
            [objective.options.tasks.a.options]
            scorer = "../elsewhere/rm.py:score"
            """
        )
    )
    config = load_config(folder / "search.toml")
    objective = config.objective
    assert objective.utility == f"{folder / 'plugins' / 'my_utility.py'}:SaysWord"
    options = objective.options
    assert options["judge_path"] == str(folder / "models" / "judge")
    assert options["reward_path"] == "org/reward-model"  # not a local path: a hub id, kept
    assert options["scorer"] == f"{folder / 'plugins' / 'rm.py'}:score"
    assert options["module_scorer"] == "my_package.rewards:score"  # a module, kept
    assert options["text"] == "models/judge"  # only *_path options are paths
    # Only files that exist are resolved in options: a prompt text is left alone, and a
    # missing plug-in file keeps the name the user wrote, for the error message.
    assert options["instruction"] == "Answer as plugins/helper.py:main would."
    assert options["missing"] == "plugins/missing.py:score"
    assert options["tasks"]["a"]["options"]["scorer"] == f"{tmp_path / 'elsewhere' / 'rm.py'}:score"


# ---------------------------------------------------------------------------- the documentation

DOCS = Path(__file__).resolve().parents[1] / "docs" / "utilities.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)


def doc_python(first_line: str) -> str:
    for block in doc_blocks("python"):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no python block starting with {first_line!r} in {DOCS}")


def test_documented_utility_plugin_works(tmp_path: Path, fresh_registry: None) -> None:
    path = tmp_path / "keyword_rate.py"
    path.write_text(doc_python("# plugins/keyword_rate.py"), encoding="utf-8")
    util = build_utility(f"{path}:KeywordRate", {"keyword": "because"}, max_new_tokens=48)
    gen = Canned(lambda p: "Yes, BECAUSE it is" if p.startswith("why") else "no")
    result = util.score(gen, [{"prompt": "why so"}, {"prompt": "what"}])
    assert result.value == 0.5 and result.metrics == {"n": 2, "hits": 1}
    assert gen.calls[0][1] == 48
    assert get_utility("keyword_rate") is type(util)


def test_documented_scorer_plugin_works(tmp_path: Path) -> None:
    path = tmp_path / "overlap_reward.py"
    path.write_text(doc_python("# plugins/overlap_reward.py"), encoding="utf-8")
    options = {"scorer": f"{path}:score", "reward_min": 0.0, "reward_max": 1.0}
    gen = Canned(lambda p: "cats purr when content")
    result = RewardModel(options).score(gen, [{"prompt": "why do cats purr"}])
    assert result.value == pytest.approx(2 / 4)  # "cats" and "purr" of four prompt words


def test_documented_objective_tables_are_valid() -> None:
    built = []
    for block in doc_blocks("toml"):
        objective = tomllib.loads(block).get("objective")
        if not objective or ":" in objective.get("utility", ":"):
            continue  # a fragment, or a plug-in file that exists only in the example
        built.append(
            build_utility(
                objective["utility"],
                objective.get("options", {}),
                max_new_tokens=objective.get("max_new_tokens"),
            )
        )
    names = [u.name for u in built]
    assert {"multiple_choice", "multitask", "reward_model", "human_interest"} <= set(names)
    assert names.count("multitask") == 2
