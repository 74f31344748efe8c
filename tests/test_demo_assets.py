"""The demo's offline assets: files, reloadability, the cache, and headroom on the target task.

Scoring here uses plain transformers/peft (not swarmq's evaluator), so these tests check the
assets themselves: every expert is imperfect on the target, some expert is better than nothing,
and a simple mixture of experts beats the best one (the room the swarm needs).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from swarmq.demo import DEMO_VERSION, build_demo_assets, default_cache_dir

# peft trips a transformers deprecation warning when it wraps a model: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def assets(demo_assets: Any) -> Any:
    return demo_assets


@pytest.fixture(scope="module")
def dataset(assets: Any) -> dict[str, Any]:
    return json.loads(assets.dataset_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def scorer(assets: Any, dataset: dict[str, Any]) -> Any:
    """``score(weights, split)``: exact-match accuracy of base + a mix of expert adapters.

    ``weights`` maps expert names to coefficients applied elementwise to every LoRA tensor (A and
    B separately, as the swarm does); an empty mapping scores the base model.
    """
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.base_model_dir)
    names = sorted(p.name for p in assets.experts_dir.iterdir() if p.is_dir())
    tensors = {n: load_file(assets.experts_dir / n / "adapter_model.safetensors") for n in names}
    base = AutoModelForCausalLM.from_pretrained(assets.base_model_dir).eval()
    model = PeftModel.from_pretrained(base, assets.experts_dir / names[0]).eval()

    def score(weights: dict[str, float], split: str = "dev") -> float:
        mix = {k: torch.zeros_like(v) for k, v in tensors[names[0]].items()}
        for n, w in weights.items():
            for k in mix:
                mix[k] += w * tensors[n][k]
        set_peft_model_state_dict(model, mix)
        items = dataset[split]
        enc = tok([x["question"] for x in items], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=1, do_sample=False)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        hits = [x["answer"].strip() == t.strip() for x, t in zip(items, texts, strict=True)]
        return sum(hits) / len(hits)

    score.names = names  # type: ignore[attr-defined]
    return score


def test_files_and_reload(assets: Any) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in (assets.base_model_dir, assets.experts_dir):
        assert path.is_dir()
    for path in (assets.dataset_path, assets.config_path):
        assert path.is_file()
    assert (assets.base_model_dir / "model.safetensors").is_file()

    tok = AutoTokenizer.from_pretrained(assets.base_model_dir)
    assert tok.padding_side == "left"
    assert tok.pad_token is not None and tok.eos_token is not None and tok.bos_token is not None
    ids = tok("max 3 8 1 4 =")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids and len(ids) == 7
    assert tok.decode(ids, skip_special_tokens=True) == "max 3 8 1 4 ="

    model = AutoModelForCausalLM.from_pretrained(assets.base_model_dir)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # tiny: CPU-friendly


def test_experts_are_distinct_peft_adapters(assets: Any) -> None:
    from safetensors.torch import load_file

    dirs = sorted(p for p in assets.experts_dir.iterdir() if p.is_dir())
    assert len(dirs) >= 4
    bases = set()
    weights = []
    for d in dirs:
        cfg = json.loads((d / "adapter_config.json").read_text(encoding="utf-8"))
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
        bases.add(cfg["base_model_name_or_path"])
        weights.append(load_file(d / "adapter_model.safetensors"))
    assert bases == {str(assets.base_model_dir)}
    keys = set(weights[0])
    assert keys and all(set(w) == keys for w in weights)
    for a, b in itertools.combinations(weights, 2):
        assert any(not torch.equal(a[k], b[k]) for k in keys)


def test_dataset_shape(dataset: dict[str, Any]) -> None:
    assert dataset["dataset"] == "demo_target"
    assert 60 <= len(dataset["dev"]) <= 200 and 100 <= len(dataset["test"]) <= 400
    for split in ("dev", "test"):
        for item in dataset[split]:
            assert set(item) == {"question", "answer"}
            assert isinstance(item["question"], str) and isinstance(item["answer"], str)
            assert item["answer"].isdigit() and len(item["answer"]) == 1
    dev = {x["question"] for x in dataset["dev"]}
    assert len(dev) == len(dataset["dev"])
    assert not dev & {x["question"] for x in dataset["test"]}


def test_config_loads_and_points_at_the_assets(assets: Any) -> None:
    from swarmq.config import load_config

    cfg = load_config(assets.config_path)
    assert Path(cfg.experts.path) == assets.experts_dir
    assert Path(cfg.base_model.path) == assets.base_model_dir
    assert Path(cfg.objective.dataset) == assets.dataset_path
    assert cfg.objective.utility == "exact_match" and cfg.objective.max_new_tokens == 1


def test_second_call_reuses_the_cache(assets: Any) -> None:
    files = sorted(p for p in assets.root.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    # Reused, not rebuilt: no file is written again (mtimes below).
    again = build_demo_assets(assets.root)
    assert again == assets
    assert sorted(p for p in assets.root.rglob("*") if p.is_file()) == files
    assert all(p.stat().st_mtime_ns == stamps[p] for p in files)


def test_partial_or_outdated_build_is_not_complete(tmp_path: Path, assets: Any) -> None:
    from swarmq.demo._build import MARKER_NAME, is_complete

    assert is_complete(assets.root)
    partial = tmp_path / "partial"
    (partial / "base_model").mkdir(parents=True)
    assert not is_complete(partial)
    (partial / MARKER_NAME).write_text("swarmq-demo-0\n", encoding="utf-8")
    assert not is_complete(partial)
    (partial / MARKER_NAME).write_text(DEMO_VERSION + "\n", encoding="utf-8")
    assert is_complete(partial)


def test_target_leaves_headroom(scorer: Any) -> None:
    names = scorer.names
    dev = {n: scorer({n: 1.0}) for n in names}
    # Each expert is imperfect on the mixed target, some is useful, and they differ.
    assert all(v < 1.0 for v in dev.values())
    assert max(dev.values()) > 0.0
    assert len(set(dev.values())) > 1
    assert max(dev.values()) > scorer({})  # the best expert beats the bare base model
    # A plain mixture (coefficients summing to 1, as the swarm's particles) beats the best
    # expert: the swarm has something to find.
    mixtures = [{n: 1.0 / len(names) for n in names}]
    mixtures += [{a: 0.5, b: 0.5} for a, b in itertools.combinations(names, 2)]
    assert max(scorer(m) for m in mixtures) > max(dev.values()) + 0.05


def test_import_is_lazy(tmp_path: Path) -> None:
    code = (
        "import sys, swarmq.demo as d\n"
        "d.default_cache_dir()\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SWARMQ_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "demo"
    monkeypatch.delenv("SWARMQ_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "swarmq" / "demo"
