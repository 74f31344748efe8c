"""peft's merges as baselines: what ``add_weighted_adapter`` makes of LoRA positions.

The tiny world's experts are rank-4 LoRA adapters with ``lora_alpha = 8`` (scaling 2), so a
merge that forgot to bring peft's merged adapter (scaling 1) back to the pool's scaling would be
off by a factor 2 in every check below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from swarmq.config import parse_config
from swarmq.errors import ModelError, UtilityError
from swarmq.modeling import Evaluator
from swarmq.modeling._merge import merge_task_vectors, read_base_tensors
from swarmq.objectives import MultipleChoice, UtilityResult
from swarmq.weights import Layout, load_pool


@pytest.fixture(scope="module")
def evaluator(tiny_world: dict[str, Path]) -> tuple[Evaluator, Any]:
    pool = load_pool(tiny_world["experts"])
    config = parse_config(
        {
            "experts": {"path": str(tiny_world["experts"])},
            "base_model": {"path": str(tiny_world["base"]), "device": "cpu"},
            "objective": {
                "utility": "multiple_choice",
                "dataset": str(tiny_world["dataset"]),
                "max_new_tokens": 2,
            },
        }
    )
    return Evaluator(config, pool.adapter_config), pool


def factors(
    layout: Layout, vector: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    tensors = layout.unflatten(vector)
    a = {k: v for k, v in tensors.items() if "lora_A" in k}
    b = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert a and b and len(a) + len(b) == len(tensors)
    return a, b


def test_one_expert_merged_alone_is_itself(evaluator: tuple[Evaluator, Any]) -> None:
    ev, pool = evaluator
    merged = ev.merge(pool.layout, [pool.vectors[1]], [1.0], "task_arithmetic", 0.5, 0)
    np.testing.assert_allclose(merged, pool.vectors[1], rtol=1e-6, atol=1e-7)


def test_linear_combines_each_factor_with_square_root_weights(
    evaluator: tuple[Evaluator, Any],
) -> None:
    """peft's ``linear``: ``A = sqrt(w1) A1 - sqrt(|w2|) A2`` (a weight's sign on ``lora_A``
    only), ``B = sqrt(w1) B1 + sqrt(|w2|) B2``, once each weight's scaling is taken back out."""
    ev, pool = evaluator
    x1, x2 = pool.vectors[0], pool.vectors[2]
    merged = ev.merge(pool.layout, [x1, x2], [0.64, -0.25], "task_arithmetic", 0.5, 0)
    (a, b), (a1, b1), (a2, b2) = (factors(pool.layout, v) for v in (merged, x1, x2))
    for k in a:
        np.testing.assert_allclose(a[k], 0.8 * a1[k] - 0.5 * a2[k], rtol=1e-5, atol=1e-6)
    for k in b:
        np.testing.assert_allclose(b[k], 0.8 * b1[k] + 0.5 * b2[k], rtol=1e-5, atol=1e-6)


def test_ties_of_identical_experts_is_the_expert(evaluator: tuple[Evaluator, Any]) -> None:
    ev, pool = evaluator
    x = pool.vectors[3]
    merged = ev.merge(pool.layout, [x, x, x], [1.0, 1.0, 1.0], "ties", 1.0, 0)
    np.testing.assert_allclose(merged, x, rtol=1e-5, atol=1e-6)


def test_merged_position_computes_what_peft_merged_adapter_computes(
    evaluator: tuple[Evaluator, Any], tiny_world: dict[str, Path]
) -> None:
    """Through the evaluator, the TIES merge of two experts as a position of the pool; directly
    in peft, ``add_weighted_adapter`` on the experts loaded from disk: the two models give the
    same logits. (TIES, not DARE: peft initialises the merged adapter's modules from the same
    generator before DARE draws its masks, and the experts' saved configurations initialise
    differently from the resident model's, so DARE's masks would differ for that reason.)"""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    ev, pool = evaluator
    names = [e.name for e in pool.experts]
    merged = ev.merge(pool.layout, pool.vectors[:2], [0.7, 0.6], "ties", 0.5, 11)

    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_world["base"]),
        str(tiny_world["experts"] / names[0]),
        adapter_name="e0",
    )
    peft_model.load_adapter(str(tiny_world["experts"] / names[1]), adapter_name="e1")
    peft_model.add_weighted_adapter(
        ["e0", "e1"], [0.7, 0.6], "m", combination_type="ties", density=0.5
    )
    peft_model.set_adapter("m")
    peft_model.eval()

    mine = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_world["base"]),
        str(tiny_world["experts"] / names[0]),
    )
    state = {k: torch.from_numpy(np.array(v)) for k, v in pool.layout.unflatten(merged).items()}
    result = set_peft_model_state_dict(mine, state)
    assert not [k for k in result.unexpected_keys if "lora" in k]
    assert isinstance(mine.peft_config["default"], LoraConfig)
    mine.eval()
    tokens = torch.tensor([[2, 5, 7, 9, 11, 4, 6]])
    with torch.no_grad():
        torch.testing.assert_close(
            mine(tokens).logits, peft_model(tokens).logits, rtol=1e-4, atol=1e-5
        )


def test_merging_is_seeded_and_leaves_the_model_as_it_was(
    evaluator: tuple[Evaluator, Any],
) -> None:
    ev, pool = evaluator
    before = ev.evaluate(pool.layout, pool.vectors[0], "dev")
    state = torch.random.get_rng_state()
    one = ev.merge(pool.layout, pool.vectors, [0.5] * 4, "dare_linear", 0.5, 3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the process's generator untouched
    again = ev.merge(pool.layout, pool.vectors, [0.5] * 4, "dare_linear", 0.5, 3)
    other = ev.merge(pool.layout, pool.vectors, [0.5] * 4, "dare_linear", 0.5, 4)
    assert one.tobytes() == again.tobytes() and one.tobytes() != other.tobytes()
    model = ev._resident.model
    assert "swarmq_merged" not in model.peft_config and model.active_adapter == "default"
    assert ev.evaluate(pool.layout, pool.vectors[0], "dev") == before
    with pytest.raises(ModelError, match="unknown merge method 'slerp'"):
        ev.merge(pool.layout, pool.vectors, [0.5] * 4, "slerp", 0.5, 3)


def test_full_weight_merges_act_on_task_vectors(tiny_world: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(tiny_world["base"] / "model.safetensors"))
    keys = sorted(k for k in weights if k.endswith("q_proj.weight"))
    layout = Layout.from_shapes({k: (tuple(weights[k].shape), "F32") for k in keys})
    base = read_base_tensors(str(tiny_world["base"]), layout)
    assert base.tobytes() == layout.flatten({k: weights[k].numpy() for k in keys}).tobytes()
    rng = np.random.default_rng(0)
    experts = [base + rng.normal(size=base.shape).astype(np.float32) for _ in range(3)]
    merged = merge_task_vectors(layout, base, experts, [0.5, 0.25, 1.0], "task_arithmetic", 1.0, 0)
    by_hand = base + sum(w * (x - base) for w, x in zip([0.5, 0.25, 1.0], experts, strict=True))
    np.testing.assert_allclose(merged, by_hand, rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelError, match="has none"):
        read_base_tensors(str(tiny_world["experts"]), layout)


def test_item_scores_must_number_the_examples(evaluator: tuple[Evaluator, Any]) -> None:
    ev, pool = evaluator

    class Short(MultipleChoice):
        def score(self, generator: Any, examples: Any) -> UtilityResult:
            return UtilityResult(0.5, {}, item_scores=(1.0,))

    real = ev.utility
    ev.utility = Short()
    try:
        with pytest.raises(UtilityError, match="1 item scores for 24 examples"):
            ev.evaluate(pool.layout, pool.vectors[0], "dev")
    finally:
        ev.utility = real
