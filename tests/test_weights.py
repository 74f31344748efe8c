"""Expert pools: discovery, reading, layout checks and export back to loadable peft adapters."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch
from transformers import LlamaConfig, LlamaForCausalLM

from swarmq.errors import LayoutError, SwarmqError
from swarmq.weights import (
    Expert,
    Layout,
    TensorSpec,
    discover_experts,
    export_adapter,
    load_pool,
    read_expert,
)
from swarmq.weights._export import state_dict_from_vector

# Created in this (unsorted) order on purpose: discovery must sort by name.
EXPERT_NAMES = ("zeta", "alpha", "mid")
INPUT_IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 60, 7]])


def _base(base_dir: Path) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(base_dir)
    model.eval()
    return model


def _make_expert(base_dir: Path, out: Path, seed: int, **lora: Any) -> Path:
    options: dict[str, Any] = {
        "r": 4,
        "target_modules": ["q_proj", "v_proj"],
        "init_lora_weights": False,
    }
    options.update(lora)
    torch.manual_seed(seed)
    model = get_peft_model(_base(base_dir), LoraConfig(**options))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    out = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def experts_dir(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pool = tmp_path_factory.mktemp("experts")
    for seed, name in enumerate(EXPERT_NAMES, start=1):
        _make_expert(base_dir, pool / name, seed)
    return pool


@pytest.fixture
def pool_copy(experts_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Copy some of the session experts into a fresh pool folder that a test may alter."""

    def copy(*names: str) -> Path:
        folder = tmp_path / "pool"
        folder.mkdir(exist_ok=True)
        for name in names or EXPERT_NAMES:
            shutil.copytree(experts_dir / name, folder / name)
        return folder

    return copy


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


# --- discovery ---------------------------------------------------------------------------------


def test_discovery_is_sorted_by_name(experts_dir: Path) -> None:
    experts = discover_experts(experts_dir)
    assert [e.name for e in experts] == sorted(EXPERT_NAMES)
    assert all(e.kind == "peft" and e.path == experts_dir / e.name for e in experts)


def test_discovery_skips_hidden_entries_and_top_level_config(
    pool_copy: Callable[..., Path],
) -> None:
    folder = pool_copy()
    (folder / ".cache").mkdir()
    (folder / ".DS_Store").write_text("x")
    (folder / "adapter_config.json").write_text("{}")
    assert [e.name for e in discover_experts(folder)] == ["alpha", "mid", "zeta"]


@pytest.mark.parametrize("name", ["weights.bin", "weights.pt"])
def test_pickled_file_is_refused(pool_copy: Callable[..., Path], name: str) -> None:
    folder = pool_copy()
    (folder / name).write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(LayoutError, match=r"pickled .*safetensors only") as info:
        discover_experts(folder)
    assert name in str(info.value)


def test_folder_with_pickled_adapter_is_refused(pool_copy: Callable[..., Path]) -> None:
    folder = pool_copy()
    legacy = folder / "legacy"
    legacy.mkdir()
    (legacy / "adapter_config.json").write_text("{}")
    (legacy / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(LayoutError, match=r"legacy.*pickled.*safetensors only"):
        discover_experts(folder)


def test_folder_without_adapter_files_is_refused(pool_copy: Callable[..., Path]) -> None:
    folder = pool_copy()
    (folder / "empty").mkdir()
    with pytest.raises(LayoutError, match=r"empty.*lacks adapter_config.json"):
        discover_experts(folder)


def test_missing_small_and_mixed_pools_are_refused(
    pool_copy: Callable[..., Path], tmp_path: Path
) -> None:
    with pytest.raises(LayoutError, match=r"nowhere.*does not exist"):
        discover_experts(tmp_path / "nowhere")
    folder = pool_copy("alpha")
    with pytest.raises(LayoutError, match=r"holds 1 expert.*at least 2"):
        discover_experts(folder)
    shutil.copy(folder / "alpha" / "adapter_model.safetensors", folder / "plain.safetensors")
    shutil.copytree(folder / "alpha", folder / "beta")
    with pytest.raises(LayoutError, match=r"mixes peft .*\['alpha', 'beta'\].*\['plain'\]"):
        discover_experts(folder)


# --- layout and reading ------------------------------------------------------------------------


def test_layout_flatten_unflatten_round_trip(experts_dir: Path) -> None:
    experts = discover_experts(experts_dir)
    layout, tensors = read_expert(experts[0])
    other, _ = read_expert(experts[1])
    assert layout == other and layout.first_difference(other) is None
    # 2 layers x (q_proj, v_proj) x (lora_A, lora_B)
    assert len(layout.tensors) == 8
    assert all(t.dtype == "F32" for t in layout.tensors)
    assert all(".lora_A." in k or ".lora_B." in k for k in layout.keys)
    assert Layout.from_json(layout.to_json()) == layout

    vector = layout.flatten(tensors)
    assert vector.dtype == np.float32 and vector.shape == (layout.size,)
    back = layout.unflatten(vector)
    assert list(back) == layout.keys
    for key, arr in tensors.items():
        np.testing.assert_array_equal(back[key], arr)
    # The file is read as stored: compare with torch's own safetensors reader.
    stored = load_torch(str(experts_dir / "alpha" / "adapter_model.safetensors"))
    for key, arr in stored.items():
        np.testing.assert_array_equal(tensors[key], arr.numpy())


def test_load_pool_reads_every_expert_quietly(
    experts_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = load_pool(experts_dir)
    assert capsys.readouterr().out == ""
    assert [e.name for e in pool.experts] == ["alpha", "mid", "zeta"]
    assert len(pool.vectors) == 3
    for expert, vector in zip(pool.experts, pool.vectors, strict=True):
        layout, tensors = read_expert(expert)
        np.testing.assert_array_equal(vector, layout.flatten(tensors))
    # Different seeds give different experts.
    assert not np.array_equal(pool.vectors[0], pool.vectors[1])
    assert pool.adapter_config is not None
    assert pool.adapter_config["r"] == 4
    assert pool.adapter_config == json.loads(
        (experts_dir / "alpha" / "adapter_config.json").read_text()
    )


def test_non_floating_tensor_is_refused(tmp_path: Path) -> None:
    save_numpy({"w": np.zeros((2, 2), np.float32)}, str(tmp_path / "a.safetensors"))
    save_numpy(
        {"w": np.zeros((2, 2), np.float32), "step": np.zeros(1, np.int64)},
        str(tmp_path / "b.safetensors"),
    )
    with pytest.raises(LayoutError, match=r"'step'.*I64"):
        load_pool(tmp_path)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        # A higher rank: the first (sorted) key already has another shape.
        (
            {"r": 8},
            r"'base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight' "
            r"has shape \[4, 32\] in one and \[8, 32\]",
        ),
        # Other modules: k_proj sorts before q_proj, so it is the first difference.
        (
            {"target_modules": ["q_proj", "k_proj"]},
            r"'base_model\.model\.model\.layers\.0\.self_attn\.k_proj\.lora_A\.weight' "
            r"is missing from the first layout",
        ),
    ],
)
def test_mismatched_layout_is_refused(
    pool_copy: Callable[..., Path],
    base_dir: Path,
    lora: dict[str, Any],
    message: str,
) -> None:
    folder = pool_copy("alpha", "mid")
    _make_expert(base_dir, folder / "odd", seed=7, **lora)
    with pytest.raises(LayoutError, match=message) as info:
        load_pool(folder)
    text = str(info.value)
    assert "'odd'" in text and "'alpha'" in text


def test_differing_lora_alpha_is_refused(pool_copy: Callable[..., Path]) -> None:
    folder = pool_copy()
    config_path = folder / "zeta" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["lora_alpha"] = 32
    config_path.write_text(json.dumps(config))
    with pytest.raises(LayoutError, match=r"'lora_alpha' is 8 in expert 'alpha'.*but 32 in expert"):
        load_pool(folder)


def test_target_module_order_does_not_matter(pool_copy: Callable[..., Path]) -> None:
    folder = pool_copy()
    config_path = folder / "mid" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = list(reversed(sorted(config["target_modules"])))
    config_path.write_text(json.dumps(config))
    assert len(load_pool(folder).experts) == 3


def test_plain_safetensors_pool(experts_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    for name in EXPERT_NAMES:
        shutil.copy(
            experts_dir / name / "adapter_model.safetensors", folder / f"{name}.safetensors"
        )
    peft_pool = load_pool(experts_dir)

    pool = load_pool(folder)
    assert [(e.name, e.kind) for e in pool.experts] == [
        ("alpha", "safetensors"),
        ("mid", "safetensors"),
        ("zeta", "safetensors"),
    ]
    assert pool.adapter_config is None
    assert pool.layout == peft_pool.layout
    for a, b in zip(pool.vectors, peft_pool.vectors, strict=True):
        np.testing.assert_array_equal(a, b)

    given = tmp_path / "given.json"
    given.write_text(json.dumps({"r": 4, "source": "argument"}))
    assert load_pool(folder, adapter_config=given).adapter_config == {"r": 4, "source": "argument"}
    (folder / "adapter_config.json").write_text(json.dumps({"source": "folder"}))
    assert load_pool(folder).adapter_config == {"source": "folder"}
    assert load_pool(folder, adapter_config=given).adapter_config["source"] == "argument"
    with pytest.raises(LayoutError, match=r"missing\.json does not exist"):
        load_pool(folder, adapter_config=tmp_path / "missing.json")


def test_bf16_adapter_round_trips(experts_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bf16"
    for name in ("alpha", "mid"):
        (folder / name).mkdir(parents=True)
        shutil.copy(experts_dir / name / "adapter_config.json", folder / name)
        tensors = load_torch(str(experts_dir / name / "adapter_model.safetensors"))
        save_torch(
            {k: v.to(torch.bfloat16) for k, v in tensors.items()},
            str(folder / name / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
    pool = load_pool(folder)
    assert {t.dtype for t in pool.layout.tensors} == {"BF16"}
    stored = load_torch(str(folder / "alpha" / "adapter_model.safetensors"))
    expected = pool.layout.flatten({k: v.float().numpy() for k, v in stored.items()})
    np.testing.assert_array_equal(pool.vectors[0], expected)

    out = export_adapter(pool.layout, pool.vectors[0], tmp_path / "out", pool.adapter_config)
    written = load_torch(str(out / "adapter_model.safetensors"))
    assert set(written) == set(stored)
    for key, value in written.items():
        assert value.dtype == torch.bfloat16
        assert torch.equal(value, stored[key])
    # Reading the export back gives the same layout (dtype included) and the same position.
    again = load_pool(folder)
    np.testing.assert_array_equal(again.vectors[0], pool.vectors[0])


def test_f16_export_keeps_dtype_and_refuses_overflow(tmp_path: Path) -> None:
    layout = Layout((TensorSpec("a", (2,), "F16"), TensorSpec("b", (1,), "F64")))
    out = export_adapter(layout, np.array([0.5, -1.0, 2.0], np.float32), tmp_path / "o", None)
    written = load_numpy(str(out / "model.safetensors"))
    assert written["a"].dtype == np.float16 and written["b"].dtype == np.float64
    np.testing.assert_array_equal(written["a"], [0.5, -1.0])
    assert state_dict_from_vector(layout, np.zeros(3, np.float32))["a"].dtype == np.float16
    with pytest.raises(SwarmqError, match=r"'a'.*overflow F16"):
        export_adapter(layout, np.array([1e6, 0, 0], np.float32), tmp_path / "o", None)


# --- export ------------------------------------------------------------------------------------


def test_export_of_an_expert_loads_identically(
    experts_dir: Path, base_dir: Path, tmp_path: Path
) -> None:
    pool = load_pool(experts_dir)
    index = [e.name for e in pool.experts].index("mid")
    out = export_adapter(
        pool.layout,
        pool.vectors[index],
        tmp_path / "export",
        pool.adapter_config,
        metadata={"particle": "3"},
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    original = PeftModel.from_pretrained(_base(base_dir), experts_dir / "mid")
    exported = PeftModel.from_pretrained(_base(base_dir), out)
    expected, got = _logits(original), _logits(exported)
    assert torch.equal(expected, got)
    # The adapter really changes the model: otherwise the comparison above would prove nothing.
    assert not torch.equal(_logits(_base(base_dir)), got)


def test_export_of_a_combination_loads_that_combination(
    experts_dir: Path, base_dir: Path, tmp_path: Path
) -> None:
    pool = load_pool(experts_dir)
    a, b, c = pool.vectors
    combo = (0.5 * a + 0.3 * b - 0.2 * c).astype(np.float32)
    out = export_adapter(pool.layout, combo, tmp_path / "combo", pool.adapter_config)

    model = PeftModel.from_pretrained(_base(base_dir), out)
    loaded = {k: v.detach().numpy() for k, v in get_peft_model_state_dict(model).items()}
    expected = pool.layout.unflatten(combo)
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key], value)
    assert not torch.equal(
        _logits(model), _logits(PeftModel.from_pretrained(_base(base_dir), experts_dir / "alpha"))
    )


def test_export_refuses_non_finite_values(experts_dir: Path, tmp_path: Path) -> None:
    pool = load_pool(experts_dir)
    vector = pool.vectors[0].copy()
    vector[[0, 5, 9]] = [np.nan, np.inf, -np.inf]
    with pytest.raises(SwarmqError, match=r"3 non-finite"):
        export_adapter(pool.layout, vector, tmp_path / "bad", pool.adapter_config)
    assert not (tmp_path / "bad").exists()


def test_export_overwrites_only_previous_exports(experts_dir: Path, tmp_path: Path) -> None:
    pool = load_pool(experts_dir)
    out = tmp_path / "best"
    export_adapter(pool.layout, pool.vectors[0], out, pool.adapter_config)
    # A second export into the same folder replaces the first.
    export_adapter(pool.layout, pool.vectors[1], out, pool.adapter_config)
    again = read_expert(Expert("best", out, "peft"))[1]
    np.testing.assert_array_equal(pool.layout.flatten(again), pool.vectors[1])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # An expert's own folder (it has a README.md and no export marker) is not overwritten.
    target = tmp_path / "expert_copy"
    shutil.copytree(experts_dir / "alpha", target)
    before = (target / "adapter_model.safetensors").read_bytes()
    with pytest.raises(LayoutError, match=r"expert_copy.*--overwrite"):
        export_adapter(pool.layout, pool.vectors[2], target, pool.adapter_config)
    assert (target / "adapter_model.safetensors").read_bytes() == before
    export_adapter(pool.layout, pool.vectors[2], target, pool.adapter_config, overwrite=True)
    assert (target / "adapter_model.safetensors").read_bytes() != before

    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(LayoutError, match=r"not empty"):
        export_adapter(pool.layout, pool.vectors[0], other, None)


def test_plain_export_writes_model_safetensors_only(experts_dir: Path, tmp_path: Path) -> None:
    pool = load_pool(experts_dir)
    out = tmp_path / "plain"
    export_adapter(pool.layout, pool.vectors[0], out, pool.adapter_config)
    # Re-exporting as full weights replaces the adapter files rather than leaving both kinds.
    export_adapter(pool.layout, pool.vectors[1], out, None)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    stored = load_torch(str(out / "model.safetensors"))
    np.testing.assert_array_equal(
        pool.layout.flatten({k: v.numpy() for k, v in stored.items()}), pool.vectors[1]
    )


def test_export_rejects_wrong_vector_shape(experts_dir: Path, tmp_path: Path) -> None:
    pool = load_pool(experts_dir)
    with pytest.raises(LayoutError, match=rf"{pool.layout.size} elements"):
        export_adapter(pool.layout, pool.vectors[0][:-1], tmp_path / "x", pool.adapter_config)
