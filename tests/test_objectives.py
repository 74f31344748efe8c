"""Objectives: registry, options, dataset loading, answer parsing and scoring (no model needed)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from swarmq.errors import DatasetError, UtilityError
from swarmq.objectives import (
    ExactMatch,
    MultipleChoice,
    TextGenerator,
    Utility,
    UtilityResult,
    answer_in_tail,
    available_utilities,
    build_prompt,
    build_utility,
    get_utility,
    load_dataset,
    parse_choice,
    register_utility,
)
from swarmq.objectives import _registry as _registry
from swarmq.objectives.exact_match import tail_length

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "model-swarms-eval"
CHOICES = {"A": "London", "B": "Paris", "C": "Rome", "D": "Berlin"}


class FakeGenerator:
    """A TextGenerator returning canned outputs, recording what it was asked."""

    def __init__(self, outputs: Sequence[str]) -> None:
        self.outputs = list(outputs)
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.calls.append((list(prompts), max_new_tokens))
        return self.outputs[: len(prompts)]


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def mc_item(answer: str = "B", question: str = "Capital of France?") -> dict[str, Any]:
    return {"question": question, "choices": dict(CHOICES), "answer": answer}


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test stay in that test."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))


# ---------------------------------------------------------------------------- registry


def test_builtins_registered() -> None:
    assert {"multiple_choice", "exact_match"} <= set(available_utilities())
    assert get_utility("multiple_choice") is MultipleChoice
    assert get_utility("exact_match") is ExactMatch
    assert MultipleChoice.name == "multiple_choice"
    assert isinstance(FakeGenerator([]), TextGenerator)


def test_unknown_utility_names_it_and_lists_available() -> None:
    with pytest.raises(UtilityError) as err:
        get_utility("multiple_chioce")
    msg = str(err.value)
    assert "'multiple_chioce'" in msg
    assert "exact_match" in msg and "multiple_choice" in msg


def test_duplicate_registration_refused(fresh_registry: None) -> None:
    @register_utility("dup_test")
    class First(Utility):
        def score(
            self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
        ) -> UtilityResult:
            return UtilityResult(0.0)

    with pytest.raises(UtilityError) as err:

        @register_utility("dup_test")
        class Second(Utility):
            def score(
                self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
            ) -> UtilityResult:
                return UtilityResult(1.0)

    msg = str(err.value)
    assert "'dup_test'" in msg and "First" in msg and "Second" in msg
    assert get_utility("dup_test") is First
    # Built-in names are protected the same way.
    with pytest.raises(UtilityError, match="multiple_choice"):
        register_utility("multiple_choice")(First)


def test_register_rejects_bad_names_and_classes(fresh_registry: None) -> None:
    with pytest.raises(UtilityError, match="not valid"):
        register_utility("Bad Name")
    with pytest.raises(UtilityError, match="Utility subclass"):
        register_utility("not_a_utility")(dict)  # type: ignore[type-var]


def test_user_utility_roundtrip(fresh_registry: None) -> None:
    @register_utility("length_test")
    class Length(Utility):
        example_keys: ClassVar[tuple[str, ...]] = ("prompt",)

        def score(
            self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
        ) -> UtilityResult:
            outs = generator.generate([e["prompt"] for e in examples], 4)
            return UtilityResult(sum(map(len, outs)) / len(outs), {"n": len(outs)})

    util = build_utility("length_test", {})
    assert (
        util.score(FakeGenerator(["ab", "abcd"]), [{"prompt": "x"}, {"prompt": "y"}]).value == 3.0
    )
    with pytest.raises(UtilityError, match="max_new_tokens"):
        build_utility("length_test", {}, max_new_tokens=5)


# ---------------------------------------------------------------------------- options


def test_bad_option_names_option_value_and_accepted() -> None:
    with pytest.raises(UtilityError) as err:
        MultipleChoice({"max_new_tokens": 0, "temperature": 0.7})
    msg = str(err.value)
    assert "max_new_tokens = 0" in msg
    assert "temperature = 0.7" in msg and "unknown option" in msg
    assert "accepted options" in msg and "instruction" in msg and ">= 1" in msg


def test_exact_match_template_validated() -> None:
    with pytest.raises(UtilityError, match=r"prompt_template = '\{q\}'"):
        ExactMatch({"prompt_template": "{q}"})
    util = ExactMatch({"prompt_template": "Q: {question} {{json}}\nA:"})
    assert util.prompts([{"question": "2+2", "answer": "4"}]) == ["Q: 2+2 {json}\nA:"]


def test_options_are_frozen() -> None:
    util = MultipleChoice({})
    with pytest.raises(ValueError):
        util.options.max_new_tokens = 3


def test_max_new_tokens_override_and_conflict() -> None:
    def tokens(name: str, options: dict[str, Any], override: int | None = None) -> Any:
        return build_utility(name, options, max_new_tokens=override).options.model_dump()[
            "max_new_tokens"
        ]

    assert tokens("multiple_choice", {}) == 10
    assert tokens("multiple_choice", {}, 3) == 3
    assert tokens("exact_match", {"max_new_tokens": 5}, 5) == 5
    with pytest.raises(UtilityError, match="set twice"):
        build_utility("exact_match", {"max_new_tokens": 7}, max_new_tokens=5)


def test_utility_result_must_be_finite() -> None:
    for bad in (math.nan, math.inf, "0.5", None):
        with pytest.raises(UtilityError, match="finite"):
            UtilityResult(bad)  # type: ignore[arg-type]
    assert UtilityResult(1).value == 1.0
    assert isinstance(UtilityResult(1).value, float)


# ---------------------------------------------------------------------------- multiple choice


def test_build_prompt_is_the_papers() -> None:
    prompt = build_prompt("Capital of France?", {"A": "London", "B": "Paris"})
    assert prompt == (
        "Please choose an option that best answers the question.\n"
        "Question: Capital of France?\n"
        "A: London\n"
        "B: Paris\n"
        "The answer is"
    )
    assert build_prompt("q", {"A": "x"}, instruction="").startswith("Question: q\n")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("B", "B"),
        (" B: Paris", "B"),
        ("\n  C. because", "C"),
        ("B, A.", "A"),  # several letters in the head: alphabetical order wins
        ("The answer is D.", "D"),  # head 'The a' has no letter; tail 'is D.' has
        ("well, I am quite sure it is probably C", "C"),  # tail rule
        ("its capital is paris, of course", "B"),  # text rule, case-insensitive
        ("rome or paris", "B"),  # text rule: first in letter order (B before C)
        ("a cat sat", None),  # letters are case-sensitive
        ("no idea at all", None),
        ("", None),
    ],
)
def test_parse_choice(output: str, expected: str | None) -> None:
    assert parse_choice(output, CHOICES) == expected


def test_parse_choice_head_before_tail_and_empty_text_ignored() -> None:
    assert parse_choice("C is it, not A", CHOICES) == "C"
    assert parse_choice("nothing here", {"A": "", "B": "here"}) == "B"
    assert parse_choice("nothing", {"A": "", "B": "x"}) is None


def test_multiple_choice_accuracy_with_fake_generator() -> None:
    examples = [mc_item("B"), mc_item("A"), mc_item("C"), mc_item("D")]
    gen = FakeGenerator(["B", " The answer is A", "I don't know", "berlin, surely"])
    result = MultipleChoice({"max_new_tokens": 7}).score(gen, examples)
    assert result.value == 0.75
    assert (
        result.metrics["n"] == 4
        and result.metrics["correct"] == 3
        and result.metrics["unparsed"] == 1
    )
    assert len(result.metrics["samples"]) == 3
    json.dumps(result.metrics)  # serialisable
    prompts, max_new = gen.calls[0]
    assert max_new == 7 and prompts[0] == build_prompt("Capital of France?", CHOICES)


def test_multiple_choice_rejects_wrong_output_count() -> None:
    with pytest.raises(UtilityError, match="1 outputs for 2 prompts"):
        MultipleChoice({}).score(FakeGenerator(["A"]), [mc_item(), mc_item()])


def test_answer_must_be_a_choice(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "d.json", {"dataset": "d", "dev": [mc_item()], "test": [mc_item(), mc_item("E")]}
    )
    ds = load_dataset(path, MultipleChoice.example_keys)
    with pytest.raises(DatasetError) as err:
        MultipleChoice({}).check_dataset(ds)
    assert "test[1]" in str(err.value) and "'E'" in str(err.value) and str(path) in str(err.value)


# ---------------------------------------------------------------------------- exact match


def test_answer_in_tail() -> None:
    assert tail_length("4") == 10 and tail_length("x" * 8) == 16 and tail_length("4", 3) == 3
    assert answer_in_tail(" the length is 11\n", "11")
    assert answer_in_tail("Yes", " Yes ")
    assert not answer_in_tail("11 is the start, then many more words", "11")  # not in the tail
    assert answer_in_tail("11 is the start, then many more words", "11", tail_chars=100)
    assert not answer_in_tail("anything", "  ")
    assert not answer_in_tail("", "4")


def test_exact_match_accuracy_with_fake_generator() -> None:
    examples: list[dict[str, Any]] = [
        {"question": "a", "answer": "11"},
        {"question": "b", "answer": "Yes"},
        {"question": "c", "answer": 3},  # integer answers compare as text
        {"question": "d", "answer": "No"},
    ]
    gen = FakeGenerator(
        ["The answer is 11.", "no", " 3\n", "No, because the graph has a very long cycle"]
    )
    result = ExactMatch({"prompt_template": "Q: {question}"}).score(gen, examples)
    assert result.value == 0.5
    assert result.metrics["correct"] == 2 and result.metrics["n"] == 4
    assert gen.calls[0] == (["Q: a", "Q: b", "Q: c", "Q: d"], 16)


# ---------------------------------------------------------------------------- datasets


def test_missing_dataset_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as err:
        load_dataset(tmp_path / "nope.json", ("question",))
    assert "nope.json" in str(err.value)
    with pytest.raises(DatasetError, match="is a directory"):
        load_dataset(tmp_path, ("question",))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level is a JSON list"),
        ('{"dataset": 3, "dev": [], "test": []}', "'dataset' must be a non-empty string"),
        ('{"dataset": "x", "test": [{"question": "q"}]}', "'dev' split is missing"),
        ('{"dataset": "x", "dev": {"question": "q"}, "test": []}', "'dev' is a JSON dict"),
        ('{"dataset": "x", "dev": [], "test": [{"question": "q"}]}', "'dev' split is empty"),
        ('{"dataset": "x", "dev": [{"question": "q"}], "test": ["q"]}', "test[0] is a JSON str"),
        (
            '{"dataset": "x", "dev": [{"question": "q"}, {"q": 1}], "test": [{"question": "q"}]}',
            "dev[1] has no key 'question'",
        ),
        (
            '{"dataset": "x", "dev": [{"question": 5}], "test": [{"question": "q"}]}',
            "dev[0]['question'] = 5: expected a string",
        ),
    ],
)
def test_malformed_dataset(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_dataset(path, ("question",))
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "choices",
    [["London", "Paris"], {}, {"AB": "x"}, {"1": "x"}, {"A": 1}, "A: x"],
)
def test_bad_choices(tmp_path: Path, choices: Any) -> None:
    bad = {"question": "q", "choices": choices, "answer": "A"}
    path = write_json(
        tmp_path / "mc.json", {"dataset": "mc", "dev": [mc_item()], "test": [mc_item(), bad]}
    )
    with pytest.raises(DatasetError) as err:
        load_dataset(path, MultipleChoice.example_keys)
    msg = str(err.value)
    assert "test[1]['choices']" in msg and "mapping of single letters to strings" in msg


def test_any_file_of_the_shape_loads(tmp_path: Path) -> None:
    # No "dataset" name (the file stem is used), extra keys are kept, extra item keys are fine.
    data = {"dev": [mc_item() | {"id": 1}], "test": [mc_item("A")], "icl_prompt": "Q: ... A: ..."}
    ds = load_dataset(write_json(tmp_path / "my_set.json", data), MultipleChoice.example_keys)
    assert ds.name == "my_set" and len(ds.dev) == 1 and len(ds.test) == 1
    assert ds.extra == {"icl_prompt": "Q: ... A: ..."}
    assert ds.split("test")[0]["answer"] == "A"
    with pytest.raises(DatasetError, match="unknown split"):
        ds.split("train")


needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


@needs_data
def test_real_multiple_choice_files_load() -> None:
    mmlu = load_dataset(DATA / "mmlu.json", MultipleChoice.example_keys)
    assert mmlu.name == "mmlu" and len(mmlu.dev) == 200 and len(mmlu.test) == 1000
    MultipleChoice({}).check_dataset(mmlu)
    for name in ("hellaswag", "hearsay", "citation_prediction_classification"):
        ds = load_dataset(DATA / f"{name}.json", MultipleChoice.example_keys)
        MultipleChoice({}).check_dataset(ds)
        assert ds.dev and ds.test


@needs_data
def test_real_exact_match_and_prompt_files_load() -> None:
    nlgraph = load_dataset(DATA / "nlgraph.json", ExactMatch.example_keys)
    assert nlgraph.name == "NLGraph" and len(nlgraph.dev) == 200
    ExactMatch({}).check_dataset(nlgraph)
    human = load_dataset(DATA / "human_finance.json", ("prompt",))
    assert len(human.dev) == 25 and len(human.test) == 25
    # A multiple-choice utility on an exact-match file fails with the item and key.
    with pytest.raises(DatasetError, match=r"dev\[0\] has no key 'choices'"):
        load_dataset(DATA / "nlgraph.json", MultipleChoice.example_keys)
