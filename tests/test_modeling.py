"""Modeling: a tiny random Llama with a character tokenizer, LoRA experts, end-to-end evaluation.

Everything is built in the test (no hub access): a character-level ``tokenizers`` model wrapped as
``PreTrainedTokenizerFast``, a 2-layer ``LlamaForCausalLM``, and peft LoRA experts saved with
``save_pretrained`` so that their keys are exactly those of real adapter files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from swarmq.config import SearchConfig
from swarmq.errors import DatasetError, LayoutError, ModelError, UtilityError
from swarmq.modeling import (
    Evaluator,
    check_objective,
    clear_evaluators,
    get_evaluator,
    select_device,
)
from swarmq.testing import (
    QUESTIONS,
    char_tokenizer,
    model_config,
    save_lora_experts,
    save_tiny_llama,
    write_em_dataset,
    write_mc_dataset,
)
from swarmq.weights._layout import Layout

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A base model folder, two LoRA experts (layout + vectors), datasets, and a config."""
    root = tmp_path_factory.mktemp("modeling")
    base = save_tiny_llama(root / "base", char_tokenizer())
    pool = save_lora_experts(base, root / "experts", {"expert_1": 1, "expert_2": 2})
    layout, vectors, adapter_config = pool.layout, pool.vectors, pool.adapter_config

    mc = write_mc_dataset(root / "mc.json", QUESTIONS)
    em = write_em_dataset(root / "em.json")
    return {
        "root": root,
        "base": base,
        "layout": layout,
        "vectors": vectors,
        "adapter_config": adapter_config,
        "mc": mc,
        "em": em,
    }


def make_config(world: dict[str, Any], **objective: Any) -> SearchConfig:
    defaults = {"utility": "multiple_choice", "dataset": str(world["mc"]), "batch_size": 4}
    return model_config(
        world["root"] / "experts", world["base"], **(defaults | {"dev_limit": 5} | objective)
    )


@pytest.fixture(autouse=True)
def _empty_cache():
    yield
    clear_evaluators()


@pytest.fixture(scope="module")
def evaluator(world: dict[str, Any]) -> Evaluator:
    return Evaluator(make_config(world), world["adapter_config"])


# ---------------------------------------------------------------------------- devices


def test_torch_dtype() -> None:
    from swarmq.modeling._device import torch_dtype

    assert torch_dtype("auto") == "auto"
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="'int8' is not one of 'auto', 'float32'"):
        torch_dtype("int8")


def test_select_device() -> None:
    assert select_device("cpu") == "cpu"
    assert select_device("auto") in {"cpu", "cuda", "mps"}
    with pytest.raises(ModelError, match="not a torch device"):
        select_device("banana")
    with pytest.raises(ModelError, match="cuda:99"):
        select_device("cuda:99")


# ---------------------------------------------------------------------------- evaluation


def test_evaluate_end_to_end(world: dict[str, Any], evaluator: Evaluator) -> None:
    result = evaluator.evaluate(world["layout"], world["vectors"][0], "dev")
    assert np.isfinite(result.value) and 0.0 <= result.value <= 1.0
    assert result.metrics["n"] == 5  # dev_limit
    json.dumps(result.metrics)
    test = evaluator.evaluate(world["layout"], world["vectors"][0], "test")
    assert test.metrics["n"] == 6  # no test_limit
    with pytest.raises(UtilityError, match="unknown split"):
        evaluator.evaluate(world["layout"], world["vectors"][0], "train")  # type: ignore[arg-type]


def test_evaluation_is_deterministic_and_order_independent(
    world: dict[str, Any], evaluator: Evaluator
) -> None:
    layout, (v1, v2) = world["layout"], world["vectors"]
    first = evaluator.evaluate(layout, v1)
    again = evaluator.evaluate(layout, v1)
    other = evaluator.evaluate(layout, v2)
    mixed = (0.5 * v1 + 0.5 * v2).astype(np.float32)
    evaluator.evaluate(layout, mixed)
    after = evaluator.evaluate(layout, v1)
    assert first == again == after
    assert other.metrics["n"] == first.metrics["n"]


def test_different_positions_generate_differently(
    world: dict[str, Any], evaluator: Evaluator
) -> None:
    layout, (v1, v2) = world["layout"], world["vectors"]
    prompts = evaluator.utility.prompts(evaluator.examples("dev"))  # type: ignore[attr-defined]
    evaluator.set_position(layout, v1)
    out1 = evaluator.generate(prompts, 8)
    evaluator.set_position(layout, v2)
    out2 = evaluator.generate(prompts, 8)
    evaluator.set_position(layout, v1)
    assert evaluator.generate(prompts, 8) == out1
    assert out1 != out2
    assert all(isinstance(o, str) for o in out1) and len(out1) == len(prompts)


def test_matches_peft_loading_the_adapter_folder(
    world: dict[str, Any], evaluator: Evaluator
) -> None:
    """Copying a position in place gives what peft gives when it loads that adapter from disk."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompts = evaluator.utility.prompts(evaluator.examples("dev"))  # type: ignore[attr-defined]
    evaluator.set_position(world["layout"], world["vectors"][1])
    ours = evaluator.generate(prompts, 8)
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(world["base"]), world["root"] / "experts" / "expert_2"
    ).eval()
    tok = evaluator._resident.tokenizer
    theirs = []
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p, return_tensors="pt").input_ids
            out = reference.generate(
                input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0
            )
            theirs.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    assert ours == theirs


def test_batching_does_not_change_outputs(world: dict[str, Any], evaluator: Evaluator) -> None:
    prompts = evaluator.utility.prompts(evaluator.examples("dev"))  # type: ignore[attr-defined]
    evaluator.set_position(world["layout"], world["vectors"][0])
    batched = evaluator.generate(prompts, 6)
    one_by_one = [evaluator.generate([p], 6)[0] for p in prompts]
    assert batched == one_by_one
    assert evaluator.generate([], 6) == []


def test_position_errors(world: dict[str, Any], evaluator: Evaluator) -> None:
    layout: Layout = world["layout"]
    vec = world["vectors"][0]
    with pytest.raises(LayoutError, match="float32"):
        evaluator.set_position(layout, vec.astype(np.float64))
    # A layout lacking one adapter tensor would leave stale values behind: refused.
    partial = Layout(layout.tensors[1:])
    with pytest.raises(ModelError, match="lacks 1 adapter tensor"):
        evaluator.set_position(partial, vec[layout.tensors[0].numel :].copy())
    spec = layout.tensors[0]
    extra = Layout.from_shapes(
        {**{t.key: (t.shape, t.dtype) for t in layout.tensors}, "zz.unknown": ((2,), "F32")}
    )
    with pytest.raises(ModelError, match=r"zz\.unknown"):
        evaluator.set_position(extra, np.zeros(extra.size, np.float32))
    wrong = Layout.from_shapes(
        {t.key: ((t.numel,) if t.key == spec.key else t.shape, t.dtype) for t in layout.tensors}
    )
    with pytest.raises(ModelError, match="shape"):
        evaluator.set_position(wrong, vec.copy())


def test_read_only_vector_accepted(world: dict[str, Any], evaluator: Evaluator) -> None:
    vec = world["vectors"][0].copy()
    expected = evaluator.evaluate(world["layout"], vec)
    vec.flags.writeable = False
    assert evaluator.evaluate(world["layout"], vec) == expected


def test_exact_match_objective_and_test_limit(world: dict[str, Any]) -> None:
    config = make_config(
        world, utility="exact_match", dataset=str(world["em"]), test_limit=2, max_new_tokens=4
    )
    ev = get_evaluator(config, world["adapter_config"])
    assert ev.utility.options.max_new_tokens == 4  # type: ignore[attr-defined]
    result = ev.evaluate(world["layout"], world["vectors"][1], "test")
    assert result.metrics["n"] == 2 and 0.0 <= result.value <= 1.0


# ---------------------------------------------------------------------------- full-weight pools


def test_full_weight_pool(world: dict[str, Any]) -> None:
    ev = Evaluator(make_config(world), None)
    params = dict(ev._resident.model.state_dict())
    keys = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    layout = Layout.from_shapes({k: (tuple(params[k].shape), "F32") for k in keys})
    base_vec = layout.flatten({k: params[k].numpy() for k in keys})
    rng = np.random.default_rng(0)
    moved = (base_vec + rng.normal(0, 0.5, base_vec.shape)).astype(np.float32)
    prompts = ev.utility.prompts(ev.examples("dev"))  # type: ignore[attr-defined]
    ev.set_position(layout, base_vec)
    out_base = ev.generate(prompts, 8)
    ev.set_position(layout, moved)
    out_moved = ev.generate(prompts, 8)
    ev.set_position(layout, base_vec)
    assert ev.generate(prompts, 8) == out_base != out_moved
    with pytest.raises(ModelError, match="base model does not have"):
        ev.set_position(world["layout"], world["vectors"][0])


# ---------------------------------------------------------------------------- cache and loading


def test_get_evaluator_caches_and_shares_the_model(world: dict[str, Any]) -> None:
    config = make_config(world)
    ev = get_evaluator(config, world["adapter_config"])
    assert get_evaluator(make_config(world), dict(world["adapter_config"])) is ev
    other = get_evaluator(make_config(world, dev_limit=2), world["adapter_config"])
    assert other is not ev and other._resident is ev._resident
    full = get_evaluator(config, None)  # another model key: the LoRA model is dropped
    assert full._resident is not ev._resident
    assert get_evaluator(config, world["adapter_config"]) is not ev


def test_bad_options_fail_before_loading(world: dict[str, Any], tmp_path: Path) -> None:
    config = make_config(world, options={"bogus": 1})
    config = config.model_copy(
        update={"base_model": config.base_model.model_copy(update={"path": str(tmp_path / "x")})}
    )
    with pytest.raises(UtilityError, match="bogus"):
        get_evaluator(config, None)


def test_missing_base_model(world: dict[str, Any], tmp_path: Path) -> None:
    config = make_config(world)
    missing = str(tmp_path / "no_such_model")
    config = config.model_copy(
        update={"base_model": config.base_model.model_copy(update={"path": missing})}
    )
    with pytest.raises(ModelError) as err:
        Evaluator(config, None)
    assert missing in str(err.value) and "no local path" in str(err.value)


def test_bad_adapter_config(world: dict[str, Any]) -> None:
    bad = dict(world["adapter_config"], target_modules=["no_such_module"])
    with pytest.raises(ModelError, match="cannot attach"):
        Evaluator(make_config(world), bad)


# ---------------------------------------------------------------------------- check_objective


def test_check_objective(world: dict[str, Any], tmp_path: Path) -> None:
    check_objective(make_config(world))
    check_objective(make_config(world, utility="exact_match", dataset=str(world["em"])))
    with pytest.raises(UtilityError, match="unknown utility"):
        check_objective(make_config(world, utility="nope"))
    with pytest.raises(UtilityError, match="max_new_tokens = 0"):
        check_objective(make_config(world, options={"max_new_tokens": 0}))
    with pytest.raises(DatasetError, match=r"dev\[0\] has no key 'choices'"):
        check_objective(make_config(world, dataset=str(world["em"])))
    with pytest.raises(DatasetError, match="does not exist"):
        check_objective(make_config(world, dataset=str(tmp_path / "none.json")))


def test_package_import_is_light(world: dict[str, Any]) -> None:
    code = (
        "import sys\n"
        "import swarmq.modeling, swarmq.objectives\n"
        "from swarmq.modeling import check_objective\n"
        "from swarmq.config import parse_config\n"
        f"check_objective(parse_config({{'experts': {{'path': '.'}}, 'base_model': {{'path': 'x'}},"
        f" 'objective': {{'utility': 'multiple_choice', 'dataset': {str(world['mc'])!r}}}}}))\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
