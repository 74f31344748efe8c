"""Training LoRA experts (``swarmq experts train``) and checking pools (``swarmq experts check``).

Everything runs on the tiny random Llama of ``conftest.tiny_world``: a training run is a few
dozen optimizer steps of milliseconds each.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import WORDS

from swarmq.cli import main
from swarmq.errors import DatasetError, LayoutError, ModelError
from swarmq.experts import (
    TRAINING_RECORD,
    ExpertError,
    TrainSettings,
    check_pool,
    load_training_data,
    render_item,
)
from swarmq.objectives.multiple_choice import build_prompt, parse_choice

ANSWER_WORDS = WORDS[4:]


def _mc_item(rng: random.Random) -> dict[str, Any]:
    """A learnable multiple-choice item: the gold choice is the question's first word."""
    words = rng.sample(ANSWER_WORDS, 4)
    letters = "ABCD"
    gold = rng.choice(letters)
    return {
        "question": f"{words[letters.index(gold)]} {rng.choice(ANSWER_WORDS)}",
        "choices": dict(zip(letters, words, strict=True)),
        "answer": gold,
    }


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file in the paper's format with a dev split of multiple-choice items (and a test)."""
    rng = random.Random(3)
    path = tmp_path_factory.mktemp("data") / "mc.json"
    path.write_text(
        json.dumps(
            {
                "dataset": "tiny_mc",
                "dev": [_mc_item(rng) for _ in range(32)],
                "test": [_mc_item(rng) for _ in range(8)],
            }
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def base(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world's Llama shape and tokenizer, initialised with larger weights.

    With the default initialisation (std 0.02) a width-32 model's logits are nearly uniform and
    a LoRA cannot make them peaked; std 0.3 leaves it room to learn within a few dozen steps.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("learnable") / "base"
    torch.manual_seed(0)
    vocab = len(json.loads((tiny_world["base"] / "tokenizer.json").read_text())["model"]["vocab"])
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=2,
        eos_token_id=3, initializer_range=0.3,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    for tok_file in tiny_world["base"].glob("tokenizer*"):
        shutil.copy(tok_file, folder)
    return folder


# Large steps on purpose: the tiny model must visibly learn within a few dozen steps.
FAST = TrainSettings(steps=30, lr=2e-2, batch_size=8, rank=4, device="cpu")


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _train(base: Path, data: Path, out: Path, **overrides: Any) -> Any:
    from swarmq.experts import train_expert

    return train_expert(base, data, out, FAST.model_copy(update=overrides), overwrite=True)


# ---------------------------------------------------------------------------- data


def test_every_item_format_renders_as_the_prompt_its_utility_sends() -> None:
    choices = {"A": "red", "B": "blue"}
    mc, kind = render_item({"question": "sky?", "choices": choices, "answer": "B"})
    assert kind == "multiple_choice"
    assert mc.prompt == build_prompt("sky?", choices) and mc.completion == " B"
    # The gold completion parses back to the gold letter, as the utility would read it.
    assert parse_choice(mc.completion, choices) == "B"

    qa, kind = render_item({"question": "2+2=", "answer": 4})
    assert (qa.prompt, qa.completion, kind) == ("2+2=", " 4", "question_answer")
    io, kind = render_item({"input": "Say hi.\n", "output": "hi"})
    assert (io.prompt, io.completion, kind) == ("Say hi.\n", "hi", "input_output")
    pc, kind = render_item({"prompt": "a", "completion": "b"})
    assert (pc.prompt, pc.completion, kind) == ("a", "b", "prompt_completion")


def test_splits_lists_and_jsonl(tmp_path: Path) -> None:
    item = {"question": "q", "answer": "a"}
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"train": [item] * 3, "dev": [item], "test": [item]}))
    assert load_training_data(both).split == "train"
    assert len(load_training_data(both, "dev").examples) == 1
    with pytest.raises(DatasetError, match="test split is kept for the final report"):
        load_training_data(both, "test")

    dev_only = tmp_path / "dev.json"
    dev_only.write_text(json.dumps({"dataset": "d", "dev": [item] * 2, "test": [item]}))
    data = load_training_data(dev_only)
    assert (data.name, data.split, len(data.examples)) == ("d", "dev", 2)
    with pytest.raises(DatasetError, match="no 'train' split"):
        load_training_data(dev_only, "train")

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"prompt": "p1", "completion": " c1"}\n\n{"input": "i", "output": "o"}\n')
    data = load_training_data(jsonl)
    assert [e.completion for e in data.examples] == [" c1", " o"]
    assert data.formats == {"prompt_completion": 1, "input_output": 1}
    with pytest.raises(DatasetError, match="without splits"):
        load_training_data(jsonl, "dev")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, "does not exist"),
        ("bad.json", '{"dev": [', "not valid JSON"),
        ("bad.jsonl", '{"prompt": "a", "completion": "b"}\n{oops}\n', "line 2 is not valid JSON"),
        ("number.json", "3", "top level is a JSON int"),
        ("empty.json", '{"dev": []}', "'dev' split.*holds no items"),
        ("nosplit.json", '{"test": [{"question": "q", "answer": "a"}]}', "neither a 'train'"),
        (
            "keys.json",
            '{"dev": [{"question": "q", "answer": "a"}, {"prompt": "p"}]}',
            r"dev\[1\] has keys \['prompt'\]",
        ),
        (
            "gold.json",
            '{"dev": [{"question": "q", "choices": {"A": "x"}, "answer": "C"}]}',
            r"dev\[0\]\['answer'\] = 'C' is not one of its choices \['A'\]",
        ),
        (
            "choices.json",
            '{"dev": [{"question": "q", "choices": ["x", "y"], "answer": "A"}]}',
            r"dev\[0\]\['choices'\] must be a non-empty mapping",
        ),
        ("type.json", '[{"prompt": 3, "completion": "b"}]', r"item 0\['prompt'\] is a int"),
        ("blank.json", '[{"input": "a", "output": "  "}]', r"item 0\['output'\] is empty"),
    ],
)
def test_bad_training_files_are_named(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        load_training_data(path)


# ---------------------------------------------------------------------------- training


def test_training_writes_a_peft_adapter_that_names_its_base_and_learns(
    base: Path, train_file: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "expert"
    result = _train(base, train_file, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "adapter_config.json", "adapter_model.safetensors", TRAINING_RECORD]
    )
    assert not list(tmp_path.glob(".*partial"))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == (
        4,
        8,
        ["q_proj", "v_proj"],
    )
    assert (result.examples, result.skipped, result.steps, result.split) == (32, 0, 30, "dev")
    assert result.last_loss < 0.5 * result.first_loss  # it learned (the answer format at least)

    record = json.loads((out / TRAINING_RECORD).read_text())
    assert record["formats"] == {"multiple_choice": 32} and len(record["losses"]) == 30
    assert record["settings"]["lr"] == FAST.lr

    # peft loads it onto the base, and it changes the base model's predictions.
    plain = AutoModelForCausalLM.from_pretrained(base)
    ids = torch.tensor([[4, 5, 6, 7]])
    before = plain(input_ids=ids).logits
    adapted = PeftModel.from_pretrained(plain, str(out))
    assert not torch.allclose(adapted(input_ids=ids).logits, before)


def test_training_is_deterministic_for_a_seed(base: Path, train_file: Path, tmp_path: Path) -> None:
    a = _tensors(_train(base, train_file, tmp_path / "a", steps=6).out_dir)
    b = _tensors(_train(base, train_file, tmp_path / "b", steps=6).out_dir)
    c = _tensors(_train(base, train_file, tmp_path / "c", steps=6, seed=1).out_dir)
    assert a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    # One init seed for the pool: the data seed changes what is learned, not where lora_A
    # started, so experts' A matrices stay close.
    a_keys = [k for k in a if "lora_A" in k]
    assert all(np.linalg.norm(a[k] - c[k]) < np.linalg.norm(a[k]) for k in a_keys)


def test_items_longer_than_max_length_are_skipped(base: Path, tmp_path: Path) -> None:
    from swarmq.experts import train_expert

    data = tmp_path / "lengths.jsonl"
    # Word-level tokenizer without special tokens: n prompt words + 1 answer + EOS = n + 2 ids.
    data.write_text(
        "".join(
            json.dumps({"prompt": " ".join(["red"] * n), "completion": " yes"}) + "\n"
            for n in range(1, 9)
        )
    )
    result = _train(base, data, tmp_path / "e", steps=2, max_length=6)
    assert (result.examples, result.skipped) == (4, 4)
    with pytest.raises(DatasetError, match="longer than max_length=2"):
        train_expert(base, data, tmp_path / "f", FAST.model_copy(update={"max_length": 2}))
    assert not (tmp_path / "f").exists()


def test_output_folder_and_base_errors(base: Path, train_file: Path, tmp_path: Path) -> None:
    from swarmq.experts import train_expert

    out = tmp_path / "expert"
    _train(base, train_file, out, steps=2)
    first = _tensors(out)
    with pytest.raises(ExpertError, match=r"already exists.*--overwrite"):
        train_expert(base, train_file, out, FAST)
    # --overwrite replaces a previous expert...
    train_expert(base, train_file, out, FAST.model_copy(update={"steps": 3}), overwrite=True)
    assert any(not np.array_equal(first[k], v) for k, v in _tensors(out).items())
    # ...but never deletes files a training does not write.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExpertError, match=r"notes\.txt.*refusing"):
        train_expert(base, train_file, out, FAST, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"

    with pytest.raises(ModelError, match="no local path"):
        train_expert(tmp_path / "no-such-model", train_file, tmp_path / "x", FAST)
    with pytest.raises(ModelError, match=r"target modules \['nope'\]"):
        train_expert(
            base,
            train_file,
            tmp_path / "y",
            FAST.model_copy(update={"target_modules": ("nope",)}),
        )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_train(base: Path, train_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_expert"
    args = [
        "experts", "train", "--base", str(base), "--data", str(train_file),
        "--out", str(out), "--steps", "4", "--rank", "2", "--lr", "1e-2", "--device", "cpu",
        "--target-modules", "q_proj, k_proj", "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "expert written to" in result.output and "32 items of tiny_mc (dev)" in result.output
    assert "training: step" not in result.output  # --quiet
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == (
        2,
        4,
        ["k_proj", "q_proj"],
    )

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    # Not on a terminal and not quiet: progress as plain lines, the last step always.
    logged = CliRunner().invoke(main, [*args[:7], str(tmp_path / "logged"), *args[8:-1]])
    assert logged.exit_code == 0, logged.output
    assert "training: step 1/4, loss" in logged.output
    assert "training: step 4/4, loss" in logged.output
    bad = CliRunner().invoke(main, [*args[:4], "--data", str(tmp_path / "nope.json"), *args[6:]])
    assert bad.exit_code == 2 and "nope.json' does not exist" in bad.output
    test_split = CliRunner().invoke(main, [*args, "--split", "test"])
    assert test_split.exit_code == 2 and "'test' is not one of 'train', 'dev'" in test_split.output


# ---------------------------------------------------------------------------- checking


@pytest.fixture
def pool(tiny_world: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the tiny world's four experts (random LoRA adapters of its base)."""
    folder = tmp_path / "pool"
    shutil.copytree(tiny_world["experts"], folder)
    # The tiny world's adapters record the base as they were built; point them at it.
    for cfg_path in folder.glob("*/adapter_config.json"):
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(tiny_world["base"])
        cfg_path.write_text(json.dumps(cfg))
    return folder


def _edit_config(expert: Path, **changes: Any) -> None:
    path = expert / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_a_good_pool_passes_and_fits_its_base(tiny_world: dict[str, Path], pool: Path) -> None:
    result = check_pool(pool, tiny_world["base"])
    assert result.ok, result.problems
    assert result.base_checked
    assert [r.name for r in result.rows] == [f"expert_{k}" for k in range(4)]
    size = result.rows[0].params
    assert size is not None and all(r.params == size for r in result.rows)
    norms = [r.norm for r in result.rows]
    vec = np.concatenate([v.reshape(-1) for _, v in sorted(_tensors(pool / "expert_0").items())])
    assert norms[0] == pytest.approx(float(np.linalg.norm(vec.astype(np.float64))), rel=1e-6)
    assert len(set(norms)) == 4

    out = CliRunner().invoke(
        main, ["experts", "check", str(pool), "--base", str(tiny_world["base"])]
    )
    assert out.exit_code == 0, out.output
    assert "expert_3" in out.output and "is usable" in out.output and "fits the base" in out.output


def test_trained_experts_form_a_usable_pool(base: Path, train_file: Path, tmp_path: Path) -> None:
    pool = tmp_path / "trained"
    for seed in (0, 1):
        _train(base, train_file, pool / f"e{seed}", steps=3, seed=seed)
    result = check_pool(pool, base)
    assert result.ok, result.problems
    assert not result.notes  # trained experts differ and have non-zero lora_B


def test_a_different_layout_names_the_first_differing_key(
    tiny_world: dict[str, Path], train_file: Path, pool: Path
) -> None:
    shutil.rmtree(pool / "expert_2")
    _train(tiny_world["base"], train_file, pool / "expert_2", steps=1, rank=2)
    result = check_pool(pool)
    assert not result.ok
    layout = [p for p in result.problems if "layout" in p]
    assert len(layout) == 1
    assert "expert 'expert_2' does not share the layout of expert 'expert_0'" in layout[0]
    assert (
        "layers.0.self_attn.q_proj.lora_A.weight' has shape [4, 32] in one and [2, 32]"
        in (layout[0])
    )
    assert any(
        "field 'r' is 4 in expert 'expert_0' but 2 in expert 'expert_2'" in p
        for p in result.problems
    )


def test_adapter_config_and_base_disagreements(
    tiny_world: dict[str, Path], pool: Path, tmp_path: Path
) -> None:
    _edit_config(pool / "expert_1", lora_alpha=32)
    _edit_config(pool / "expert_3", base_model_name_or_path="some/other-model")
    result = check_pool(pool)
    assert (
        "adapter config field 'lora_alpha' is 8 in expert 'expert_0' but 32 in expert "
        "'expert_1'" in " ".join(result.problems)
    )
    assert any(
        "expert 'expert_3' names base model 'some/other-model' but expert 'expert_0'" in p
        for p in result.problems
    )
    assert len(result.problems) == 2

    # Against an explicit base, a relative spelling of the same folder agrees; another does not.
    _edit_config(pool / "expert_1", lora_alpha=8)
    _edit_config(pool / "expert_3", base_model_name_or_path=str(tiny_world["base"]))
    other = tmp_path / "other_base"
    other.mkdir()
    result = check_pool(pool, other, load_base=False)
    assert len(result.problems) == 4 and all("not '" in p for p in result.problems)
    rel = Path("..") / tiny_world["base"].relative_to(tiny_world["base"].parents[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tiny_world["base"].parent)
        assert check_pool(pool, rel, load_base=False).ok


def test_non_finite_weights_are_named(pool: Path) -> None:
    from safetensors.numpy import save_file

    tensors = _tensors(pool / "expert_1")
    key = sorted(tensors)[3]
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan
    tensors[key][0, 1] = np.inf
    save_file(tensors, str(pool / "expert_1" / "adapter_model.safetensors"))
    result = check_pool(pool)
    assert result.problems == (
        f"expert 'expert_1' ({pool / 'expert_1'}) has 2 non-finite value(s) in tensor {key!r}; "
        "a search cannot move a particle from NaN or infinite weights: retrain it",
    )
    assert [r.non_finite for r in result.rows] == [0, 2, 0, 0]

    out = CliRunner().invoke(main, ["experts", "check", str(pool)])
    assert out.exit_code == 1
    assert "non-finite" in out.output and "not usable" in out.output


def test_overflowing_weights_are_named(pool: Path) -> None:
    from safetensors.numpy import save_file

    # Finite, but the first swarm update would overflow float32 to infinity.
    tensors = _tensors(pool / "expert_2")
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].copy()
    tensors[key].flat[0] = 3e38
    save_file(tensors, str(pool / "expert_2" / "adapter_model.safetensors"))
    result = check_pool(pool)
    assert len(result.problems) == 1
    assert f"tensor {key!r} of expert 'expert_2'" in result.problems[0]
    assert "above 1.84e+19 in magnitude" in result.problems[0]


def test_a_base_the_adapters_do_not_fit(
    tiny_world: dict[str, Path], pool: Path, tmp_path: Path
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = tmp_path / "wider"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
        )
    ).save_pretrained(wider)  # fmt: skip
    for tok_file in tiny_world["base"].glob("tokenizer*"):
        shutil.copy(tok_file, wider)
    for cfg in pool.glob("*/adapter_config.json"):
        _edit_config(cfg.parent, base_model_name_or_path=str(wider))
    result = check_pool(pool, wider)
    assert result.base_checked
    assert len(result.problems) == 1
    assert "expert 'expert_0' does not fit base model" in result.problems[0]
    assert "has shape [4, 32] in the pool but [4, 48] in the model" in result.problems[0]


def test_what_is_not_a_pool_is_refused(tmp_path: Path, pool: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        check_pool(tmp_path / "nothing")
    for name in ("expert_1", "expert_2", "expert_3"):
        shutil.rmtree(pool / name)
    out = CliRunner().invoke(main, ["experts", "check", str(pool)])
    assert out.exit_code == 2 and "holds 1 expert(s)" in out.output


def test_notes_for_identical_and_untrained_experts(tiny_world: dict[str, Path], pool: Path) -> None:
    from safetensors.numpy import save_file

    shutil.copytree(pool / "expert_0", pool / "expert_0_copy")
    tensors = {
        k: (np.zeros_like(v) if "lora_B" in k else v)
        for k, v in _tensors(pool / "expert_3").items()
    }
    save_file(tensors, str(pool / "expert_3" / "adapter_model.safetensors"))
    result = check_pool(pool, tiny_world["base"])
    assert result.ok
    assert result.notes == (
        "experts 'expert_0' and 'expert_0_copy' have identical weights",
        "expert 'expert_3' has all-zero lora_B tensors: it equals the base model",
    )
