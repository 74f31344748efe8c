"""Exports reproduce: the same search exported twice, and two searches of the same files and
seed, give byte-identical files (no random id in them, metadata in a fixed order)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from safetensors import safe_open
from searches import closed_form, distance_utility, make_pool

from swarmq.cli import main
from swarmq.engine import create_search
from swarmq.execution import EmbeddedRunner
from swarmq.settings import Settings
from swarmq.weights import Layout, TensorSpec, export_adapter


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_exports_of_the_same_search_and_seed_are_byte_identical(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner = EmbeddedRunner(Settings(db, tmp_path / "art"), evaluate=distance_utility)
    ids = []
    for _ in range(2):  # the same file and seed, twice: two searches, two random ids
        sid = create_search(
            runner.runtime, closed_form(pool, name="same", max_iterations=2), check_objective=False
        )
        runner.drive(sid)
        ids.append(sid)
    outputs = []
    for n, sid in enumerate([ids[0], ids[0], ids[0], ids[1], ids[1]]):
        out = tmp_path / f"export{n}"
        args = ["--db", db, "--artifacts", str(tmp_path / "art"), "export", sid, "--out", str(out)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        outputs.append(_digest(out))
        with safe_open(str(out / "model.safetensors"), framework="np") as f:
            meta = f.metadata()
        assert not any(sid in v for v in meta.values()), meta
    assert all(o == outputs[0] for o in outputs), outputs


def test_bfloat16_export_rounds_like_torch(tmp_path: Path) -> None:
    layout = Layout((TensorSpec("b", (4,), "F32"), TensorSpec("w", (3, 5), "BF16")))
    vector = np.random.default_rng(3).normal(size=layout.size).astype(np.float32) * 100
    out = export_adapter(layout, vector, tmp_path / "bf16", None)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        w, b = f.get_tensor("w"), f.get_tensor("b")
    parts = layout.unflatten(vector)
    expected = torch.from_numpy(np.ascontiguousarray(parts["w"])).to(torch.bfloat16)
    assert w.dtype == torch.bfloat16 and torch.equal(w, expected)
    assert np.array_equal(b.numpy(), parts["b"])
