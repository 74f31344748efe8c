"""The paper's utilities on real tiny models: likelihoods, chat, reward models, judges.

Everything is built here, offline: a 2-layer random Llama with a character tokenizer (and a chat
template) as the base model, LoRA experts of it, a random Llama sequence classifier as the
reward model, and as judges the random base model itself (which never writes a rating) and a
Llama whose final norm is zeroed, so that every logit is 0 and greedy decoding always picks
token 0, which that judge's vocabulary spells "Rating: 7/10".
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path
from typing import Any

import pytest
import torch

from swarmq.config import SearchConfig
from swarmq.errors import ModelError, UtilityError
from swarmq.modeling import (
    Evaluator,
    ResidentModel,
    clear_judge_models,
    load_classifier_reward,
    load_judge,
)
from swarmq.objectives import (
    ChatGenerator,
    LikelihoodScorer,
    MultipleChoice,
    build_utility,
    harmonic_mean,
    load_dataset,
    merge_task_files,
)
from swarmq.testing import (
    QUESTIONS,
    char_tokenizer,
    model_config,
    save_lora_experts,
    save_tiny_llama,
    tiny_llama_config,
    write_em_dataset,
    write_mc_dataset,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TOPICS = ["Why do cats purr?", "How do tides work?", "What is a prime?"]


def constant_judge(folder: Path) -> Path:
    """A judge that always replies 'Rating: 7/10 ...': token 0 wins every greedy step."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["Rating: 7/10", "<pad>", "<eos>", "<unk>", *string.ascii_letters]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(5)
    cfg = tiny_llama_config(tokenizer)  # its own ids: pad 1, eos 2, no BOS
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # hidden state 0 -> all logits 0 -> argmax is token 0
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("utility_models")
    tokenizer = char_tokenizer(CHAT_TEMPLATE, bos_token=True)
    base = save_tiny_llama(root / "base", tokenizer)
    # Scaled up: large enough to move the likelihoods visibly.
    pool = save_lora_experts(base, root / "experts", {"e1": 1, "e2": 2}, scale=4.0)
    layout, vectors, adapter_config = pool.layout, pool.vectors, pool.adapter_config

    rewards = {}
    for labels in (1, 3):
        torch.manual_seed(10 + labels)
        path = root / f"reward_{labels}"
        LlamaForSequenceClassification(
            tiny_llama_config(tokenizer, num_labels=labels)
        ).save_pretrained(path)
        # No chat template: pairs are encoded as pairs.
        char_tokenizer(bos_token=True).save_pretrained(path)
        rewards[labels] = path

    mc = write_mc_dataset(root / "mc.json", QUESTIONS)
    em = write_em_dataset(root / "em.json")
    topics = root / "topics.json"
    topic_items = [{"prompt": t, "id": i} for i, t in enumerate(TOPICS)]
    topics.write_text(json.dumps({"dataset": "topics", "dev": topic_items, "test": topic_items}))
    return {
        "root": root,
        "base": base,
        "layout": layout,
        "vectors": vectors,
        "adapter_config": adapter_config,
        "rewards": rewards,
        "judge": constant_judge(root / "judge"),
        "mc": mc,
        "em": em,
        "topics": topics,
    }


def make_config(world: dict[str, Any], **objective: Any) -> SearchConfig:
    defaults = {"utility": "multiple_choice", "dataset": str(world["mc"]), "batch_size": 4}
    return model_config(world["root"] / "experts", world["base"], **(defaults | objective))


@pytest.fixture(scope="module")
def resident(world: dict[str, Any]) -> ResidentModel:
    return ResidentModel.load(make_config(world).base_model, world["adapter_config"])


def evaluator(world: dict[str, Any], resident: ResidentModel, **objective: Any) -> Evaluator:
    return Evaluator(make_config(world, **objective), world["adapter_config"], resident=resident)


@pytest.fixture(autouse=True)
def _fresh_judges() -> Any:
    yield
    clear_judge_models()


# ---------------------------------------------------------------------------- log-likelihood


def reference_loglik(model: Any, tok: Any, prompt: str, continuation: str) -> float:
    """One unpadded forward pass, summing the continuation tokens' log-probabilities."""
    context = tok(prompt)["input_ids"]
    whole = tok(prompt + continuation)["input_ids"]
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logprobs[k - 1, whole[k]]) for k in range(len(context), len(whole)))


def test_loglikelihood_matches_an_unpadded_forward(
    world: dict[str, Any], resident: ResidentModel
) -> None:
    ev = evaluator(world, resident)
    assert isinstance(ev, LikelihoodScorer) and isinstance(ev, ChatGenerator)
    ev.set_position(world["layout"], world["vectors"][0])
    prompts = ["The answer is", "Question: 2 + 2 = ?\nThe answer is", "x"]
    conts = [" B", " four, of course", " y"]
    ours = ev.loglikelihood(prompts, conts)
    for p, c, value in zip(prompts, conts, ours, strict=True):
        assert value == pytest.approx(
            reference_loglik(resident.model, resident.tokenizer, p, c), abs=1e-4
        )
        assert value < 0
    # Batching (and so padding) does not change a row: one at a time gives the same numbers.
    singles = [resident.loglikelihood([p], [c], 1)[0] for p, c in zip(prompts, conts, strict=True)]
    assert ours == pytest.approx(singles, abs=1e-4)
    assert ev.loglikelihood([], []) == []
    with pytest.raises(ModelError, match="one continuation per prompt"):
        ev.loglikelihood(["a"], [])
    with pytest.raises(ModelError, match="no tokens to score"):
        ev.loglikelihood(["a"], [""])


def test_loglikelihood_options_of_one_prompt_share_a_row(
    world: dict[str, Any], resident: ResidentModel
) -> None:
    """Options after one prompt share its context row; options that read the same tokens
    (here " A" ... " D": a space, then the letter, under a character tokenizer) share their
    continuation row too, with unchanged values."""
    resident.set_position(world["layout"], world["vectors"][0])
    prompts = ["Question: pick one\nAnswer:"] * 4 + ["Another question\nAnswer:"] * 4
    conts = [" A", " B", " C", " D"] * 2
    rows: list[int] = []
    hook = resident.model.register_forward_hook(
        lambda _m, _a, kwargs, _o: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        shared = resident.loglikelihood(prompts, conts, 8)
    finally:
        hook.remove()
    assert rows == [2, 2]  # two distinct prompts, then one row " " on each for eight options
    for p, c, value in zip(prompts, conts, shared, strict=True):
        assert value == pytest.approx(
            reference_loglik(resident.model, resident.tokenizer, p, c), abs=1e-4
        )
    assert len(set(shared[:4])) == 4  # each option still gets its own log-likelihood


def test_loglik_multiple_choice_on_a_model(world: dict[str, Any], resident: ResidentModel) -> None:
    ev = evaluator(world, resident, options={"mode": "loglik", "score": "prob"})
    layout, (v1, v2) = world["layout"], world["vectors"]
    first = ev.evaluate(layout, v1)
    again = ev.evaluate(layout, v1)
    other = ev.evaluate(layout, v2)
    assert first == again  # deterministic
    assert 0.0 < first.value < 1.0 and first.value == first.metrics["gold_prob"]
    assert other.value != first.value  # continuous: moves with the weights
    # The utility is the mean softmax over the options' log-likelihoods of the gold option.
    ev.set_position(layout, v1)
    util = MultipleChoice({})
    gold = []
    for ex in ev.examples("dev"):
        prompt = util.prompts([ex])[0]
        lls = {
            x: reference_loglik(resident.model, resident.tokenizer, prompt, f" {x}")
            for x in ex["choices"]
        }
        total = sum(math.exp(v) for v in lls.values())
        gold.append(math.exp(lls[ex["answer"]]) / total)
    assert first.value == pytest.approx(sum(gold) / len(gold), abs=1e-4)
    accuracy = evaluator(world, resident, options={"mode": "loglik"}).evaluate(layout, v1)
    assert accuracy.value == first.metrics["accuracy"] and accuracy.metrics["n"] == 6


def hand_continuation(
    resident: ResidentModel, context: str, choices: dict[str, str]
) -> dict[str, tuple[float, int, int]]:
    """Per option: its log-likelihood after ``context`` by one unpadded forward pass, its
    length in characters (with the space before it) and in tokens."""
    tok = resident.tokenizer
    out = {}
    for letter, text in choices.items():
        cont = f" {text}"
        tokens = len(tok(context + cont)["input_ids"]) - len(tok(context)["input_ids"])
        out[letter] = (reference_loglik(resident.model, tok, context, cont), len(cont), tokens)
    return out


def pick(scores: dict[str, tuple[float, int, int]], how: str) -> str:
    """The option the harness convention picks: sum, per character or per token."""
    value = {
        x: ll if how == "none" else ll / (chars if how == "chars" else tokens)
        for x, (ll, chars, tokens) in scores.items()
    }
    return max(value, key=value.__getitem__)


def test_continuation_multiple_choice_matches_a_hand_computation(
    world: dict[str, Any], resident: ResidentModel
) -> None:
    """mode = 'continuation' scores each option after the question alone (options not
    listed), as the hand computation does; every normalisation, and the gold probability."""
    options = {"mode": "continuation", "normalise": "chars", "score": "prob"}
    ev = evaluator(world, resident, options=options)
    layout, (v1, _) = world["layout"], world["vectors"]
    result = ev.evaluate(layout, v1)
    ev.set_position(layout, v1)
    examples = ev.examples("dev")
    hits = dict.fromkeys(("none", "chars", "tokens"), 0)
    golds = []
    for ex in examples:
        scores = hand_continuation(resident, ex["question"], ex["choices"])
        for how in hits:
            hits[how] += pick(scores, how) == ex["answer"]
        per_char = {x: ll / chars for x, (ll, chars, _) in scores.items()}
        total = sum(math.exp(v) for v in per_char.values())
        golds.append(math.exp(per_char[ex["answer"]]) / total)
    n = len(examples)
    assert result.value == pytest.approx(sum(golds) / n, abs=1e-5)
    assert result.item_scores == pytest.approx(golds, abs=1e-5)
    assert result.metrics["accuracy_by_normalise"] == {h: k / n for h, k in hits.items()}
    assert result.metrics["accuracy"] == hits["chars"] / n
    # Not the letter prompt: listing the options first gives other numbers.
    listed = evaluator(world, resident, options={"mode": "loglik", "target": "text"})
    assert listed.evaluate(layout, v1).metrics["gold_prob"] != pytest.approx(
        evaluator(world, resident, options={"mode": "continuation"})
        .evaluate(layout, v1)
        .metrics["gold_prob"],
        abs=1e-3,
    )


def test_continuation_contexts_are_computed_once(
    world: dict[str, Any], resident: ResidentModel
) -> None:
    """Each question's context runs once for its four options; the option rows read only the
    options' own tokens, on the context's cached keys and values."""
    resident.set_position(world["layout"], world["vectors"][0])
    util = MultipleChoice({"mode": "continuation"})
    examples = load_dataset(world["mc"]).split("dev")
    prompts = util.prompts(examples)
    pairs = [
        (p, c) for p, ex in zip(prompts, examples, strict=True) for _, c in util.continuations(ex)
    ]
    widths: list[tuple[int, int]] = []
    hook = resident.model.register_forward_hook(
        lambda _m, _a, kwargs, _o: widths.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    try:
        scored = resident.loglikelihood_tokens([p for p, _ in pairs], [c for _, c in pairs], 8)
    finally:
        hook.remove()
    longest_context = max(len(resident.tokenizer(p)["input_ids"]) for p in prompts)
    longest_option = max(len(c) for _, c in pairs)  # a character tokenizer: a token per char
    assert widths[0] == (len(prompts), longest_context)  # six contexts, once each
    # Then one row per option (" 3", " 4" and " 5" after "2 + 2 = ?" read the same " ")...
    reads = {(p, c[:-1]) for p, c in pairs}
    assert sum(rows for rows, _ in widths[1:]) == len(reads) == len(pairs) - 2
    assert all(width < longest_option for _, width in widths[1:])  # ...reading the option only
    for (p, c), (value, tokens) in zip(pairs, scored, strict=True):
        assert tokens == len(c)
        assert value == pytest.approx(
            reference_loglik(resident.model, resident.tokenizer, p, c), abs=1e-4
        )


def test_token_counts_differ_from_characters_under_a_word_tokenizer(tmp_path: Path) -> None:
    """Per token is not per character when tokens are words: the hand computation with a word
    tokenizer, where ' 0 C' is two tokens of four characters and ' Jupiter' one of eight."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = [q + " " + " ".join(c.values()) for q, c, _ in QUESTIONS]
    words = ["<pad>", "<eos>", "<unk>", "<bos>", *sorted({w for t in texts for w in t.split()})]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        bos_token="<bos>",
    )
    base = save_tiny_llama(tmp_path / "words", tokenizer, seed=3)
    config = model_config(tmp_path, base, utility="multiple_choice", dataset="unused.json")
    resident = ResidentModel.load(config.base_model, None)

    class Scorer:
        def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
            raise AssertionError("not generating")

        def loglikelihood_tokens(
            self, prompts: list[str], continuations: list[str]
        ) -> list[tuple[float, int]]:
            return resident.loglikelihood_tokens(prompts, continuations, 3)

    examples = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    hands = [hand_continuation(resident, ex["question"], ex["choices"]) for ex in examples]
    assert hands[3]["A"][1:] == (4, 2) and hands[2]["C"][1:] == (8, 1)
    for how in ("none", "chars", "tokens"):
        util = MultipleChoice({"mode": "continuation", "normalise": how})
        assert util.predict(Scorer(), examples) == [pick(h, how) for h in hands]
    # On this model the per-token and per-character choices differ somewhere: the test above
    # tells them apart.
    assert [pick(h, "tokens") for h in hands] != [pick(h, "chars") for h in hands]


# ---------------------------------------------------------------------------- chat


def test_chat_prompts_and_generation(world: dict[str, Any], resident: ResidentModel) -> None:
    assert resident.chat_prompts(["hi"]) == ["<|user|>hi\n<|assistant|>"]
    ev = evaluator(world, resident)
    ev.set_position(world["layout"], world["vectors"][0])
    assert ev.generate_chat(["hi", "yo"], 5) == ev.generate(resident.chat_prompts(["hi", "yo"]), 5)


def test_chat_template_bos_not_doubled(world: dict[str, Any], tmp_path: Path) -> None:
    template = "<bos>" + CHAT_TEMPLATE
    char_tokenizer(template, add_bos=True).save_pretrained(tmp_path)
    from transformers import LlamaForCausalLM

    LlamaForCausalLM.from_pretrained(world["base"]).save_pretrained(tmp_path)
    judge = load_judge(str(tmp_path), "float32", "cpu", 2)
    text = judge.resident.chat_prompts(["hi"])[0]
    assert text == "<|user|>hi\n<|assistant|>"  # the tokenizer adds the one <bos>
    assert (
        judge.resident.tokenizer(text)["input_ids"].count(judge.resident.tokenizer.bos_token_id)
        == 1
    )


def test_chat_needs_a_template(world: dict[str, Any], tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    char_tokenizer(bos_token=True).save_pretrained(tmp_path)
    LlamaForCausalLM.from_pretrained(world["base"]).save_pretrained(tmp_path)
    plain = load_judge(str(tmp_path), "float32", "cpu", 2)
    assert not plain.has_chat_template
    with pytest.raises(ModelError, match="has no chat template"):
        plain.generate_chat(["hi"], 3)


# ---------------------------------------------------------------------------- abstain QA, multitask


def test_abstain_qa_on_a_model(world: dict[str, Any], resident: ResidentModel) -> None:
    ev = evaluator(world, resident, utility="abstain_qa", options={"max_new_tokens": 4})
    result = ev.evaluate(world["layout"], world["vectors"][1])
    m = result.metrics
    assert m["n"] == 6 and m["answered"] + m["abstained"] == 6
    assert m["answered_correct"] + m["answered_wrong"] == m["answered"]
    assert result.value == pytest.approx((m["answered_correct"] - m["answered_wrong"]) / 6)
    assert -1.0 <= result.value <= 1.0
    assert ev.evaluate(world["layout"], world["vectors"][1]) == result


def test_multitask_on_a_model(world: dict[str, Any], resident: ResidentModel) -> None:
    merged = merge_task_files(
        {"quiz": world["mc"], "sums": world["em"]}, world["root"] / "both.json"
    )
    tasks: dict[str, dict[str, Any]] = {
        "quiz": {"utility": "multiple_choice", "options": {"mode": "loglik", "score": "prob"}},
        "sums": {"utility": "exact_match", "options": {"max_new_tokens": 3}},
    }
    ev = evaluator(
        world, resident, utility="multitask", dataset=str(merged), options={"tasks": tasks}
    )
    layout, v1 = world["layout"], world["vectors"][0]
    result = ev.evaluate(layout, v1)
    # Equal to each task's utility computed on its own file, combined by the harmonic mean.
    ev.set_position(layout, v1)
    quiz = build_utility("multiple_choice", tasks["quiz"]["options"])
    sums = build_utility("exact_match", tasks["sums"]["options"])
    q = quiz.score(ev, load_dataset(world["mc"], quiz.example_keys).dev).value
    s = sums.score(ev, load_dataset(world["em"], sums.example_keys).dev).value
    assert result.metrics["tasks"]["quiz"]["value"] == pytest.approx(q)
    assert result.metrics["tasks"]["sums"]["value"] == s
    assert result.value == pytest.approx(harmonic_mean([q, s]))


# ---------------------------------------------------------------------------- reward model


def reference_reward(path: Path, prompt: str, response: str) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        return float(model(**tok(prompt, response, return_tensors="pt")).logits[0, 0])


def test_reward_classifier_matches_a_single_forward(world: dict[str, Any]) -> None:
    path = world["rewards"][1]
    rm = load_classifier_reward(str(path), "float32", "cpu")
    assert load_classifier_reward(str(path), "float32", "cpu") is rm  # loaded once, cached
    prompts, responses = ["Why?", "How so, exactly?", "Hm"], ["Because.", "x", "A long reply here"]
    batched = rm.rewards(
        prompts, responses, label=None, input_format="auto", batch_size=3, max_length=512
    )
    singles = [reference_reward(path, p, r) for p, r in zip(prompts, responses, strict=True)]
    assert batched == pytest.approx(singles, abs=1e-4)
    assert rm.count_tokens(["abc", ""]) == [3, 0]
    with pytest.raises(UtilityError, match="no chat template; use 'pair'"):
        rm.rewards(prompts, responses, label=None, input_format="chat", batch_size=2, max_length=64)
    clear_judge_models()
    assert load_classifier_reward(str(path), "float32", "cpu") is not rm


def test_reward_classifier_with_several_labels(world: dict[str, Any]) -> None:
    rm = load_classifier_reward(str(world["rewards"][3]), "float32", "cpu")
    args: dict[str, Any] = {"input_format": "pair", "batch_size": 2, "max_length": 64}
    with pytest.raises(UtilityError, match=r"has 3 labels.*set the option label"):
        rm.rewards(["a"], ["b"], label=None, **args)
    with pytest.raises(UtilityError, match=r"label = 3 is out of range.*0\.\.2"):
        rm.rewards(["a"], ["b"], label=3, **args)
    probs = [rm.rewards(["a", "c"], ["b", "d"], label=k, **args) for k in range(3)]
    assert all(0 < p < 1 for row in probs for p in row)
    assert [sum(col) for col in zip(*probs, strict=True)] == pytest.approx([1.0, 1.0])


def test_reward_model_utility_on_models(world: dict[str, Any], resident: ResidentModel) -> None:
    options = {
        "model_path": str(world["rewards"][1]),
        "max_new_tokens": 6,
        "reward_min": -1.0,
        "reward_max": 1.0,
        "mode": "concise",
        "length_min": 0,
        "length_max": 10,
    }
    ev = evaluator(
        world, resident, utility="reward_model", dataset=str(world["topics"]), options=options
    )
    layout, v1 = world["layout"], world["vectors"][0]
    result = ev.evaluate(layout, v1)
    # Recompute by hand: generate, score with a separately loaded classifier, normalise.
    ev.set_position(layout, v1)
    responses = [r.strip() for r in ev.generate(TOPICS, 6)]
    raw = [
        reference_reward(world["rewards"][1], p, r) for p, r in zip(TOPICS, responses, strict=True)
    ]
    norm = [min(1.0, max(0.0, (x + 1.0) / 2.0)) for x in raw]
    length = [1 - min(1.0, len(r) / 10) for r in responses]  # a character is one token here
    expected = sum((a + b) / 2 for a, b in zip(norm, length, strict=True)) / len(TOPICS)
    assert result.value == pytest.approx(expected, abs=1e-4)
    assert result.metrics["mean_reward"] == pytest.approx(sum(raw) / 3, abs=1e-4)
    assert result.metrics["mean_length"] == pytest.approx(sum(map(len, responses)) / 3)
    assert ev.evaluate(layout, v1) == result


def test_reward_model_missing_folder(
    world: dict[str, Any], resident: ResidentModel, tmp_path: Path
) -> None:
    missing = tmp_path / "no_reward_model"
    ev = evaluator(
        world,
        resident,
        utility="reward_model",
        dataset=str(world["topics"]),
        options={"model_path": str(missing), "max_new_tokens": 2},
    )
    with pytest.raises(ModelError, match=r"cannot load reward model .*no_reward_model"):
        ev.evaluate(world["layout"], world["vectors"][0])


def test_reward_model_without_a_classification_head_is_refused(world: dict[str, Any]) -> None:
    # A causal LM loads as a classifier with a randomly initialised score head: two loads would
    # give two different rewards for the same text. It is refused, naming the missing head.
    with pytest.raises(ModelError, match=r"not a sequence-classification checkpoint.*score"):
        load_classifier_reward(str(world["base"]), "float32", "cpu")


# ---------------------------------------------------------------------------- human interest


def test_human_interest_with_a_local_judge(world: dict[str, Any], resident: ResidentModel) -> None:
    options = {"judge_path": str(world["judge"]), "max_new_tokens": 8, "judge_max_new_tokens": 3}
    ev = evaluator(
        world, resident, utility="human_interest", dataset=str(world["topics"]), options=options
    )
    result = ev.evaluate(world["layout"], world["vectors"][0])
    assert result.value == 7.0
    assert result.metrics["rated"] == 3 and result.metrics["unrated"] == 0
    assert result.metrics["samples"][0]["judge"].startswith("Rating: 7/10")
    # The judge is loaded once per process and reused by later evaluations.
    judge = ev.utility.judge(ev)  # type: ignore[attr-defined]
    assert judge.resident is ev.utility.judge(ev).resident  # type: ignore[attr-defined]
    assert judge.device == "cpu"  # the evaluated model's device


def test_human_interest_unrated_judge_replies(
    world: dict[str, Any], resident: ResidentModel
) -> None:
    # The random base model as its own judge writes no rating at all.
    options = {"judge_path": str(world["base"]), "max_new_tokens": 4, "judge_max_new_tokens": 6}
    ev = evaluator(
        world, resident, utility="human_interest", dataset=str(world["topics"]), options=options
    )
    with pytest.raises(UtilityError, match=r"no 'Rating: X/10'.*in 3 of 3 replies"):
        ev.evaluate(world["layout"], world["vectors"][0])
    paper = options | {"unrated": "minimum", "max_unrated_fraction": 1.0}
    ev = evaluator(
        world, resident, utility="human_interest", dataset=str(world["topics"]), options=paper
    )
    result = ev.evaluate(world["layout"], world["vectors"][0])
    assert result.value == 1.0 and result.metrics["unrated"] == 3
    assert len(result.metrics["unrated_samples"]) == 3


def test_human_interest_missing_judge(
    world: dict[str, Any], resident: ResidentModel, tmp_path: Path
) -> None:
    options = {"judge_path": str(tmp_path / "no_judge"), "max_new_tokens": 2}
    ev = evaluator(
        world, resident, utility="human_interest", dataset=str(world["topics"]), options=options
    )
    with pytest.raises(ModelError, match=r"cannot load the judge model .*no_judge"):
        ev.evaluate(world["layout"], world["vectors"][0])


def test_judge_on_a_device_that_does_not_exist(
    world: dict[str, Any], resident: ResidentModel
) -> None:
    options = {"judge_path": str(world["judge"]), "device": "cuda:7", "max_new_tokens": 2}
    ev = evaluator(
        world, resident, utility="human_interest", dataset=str(world["topics"]), options=options
    )
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ModelError, match="cuda:7"):
        ev.evaluate(world["layout"], world["vectors"][0])
