"""Positions to hand to users: any particle's personal best, and a merged full model.

``swarmq export`` writes the global best as a peft adapter folder (:mod:`swarmq.weights`); this
module adds the personal best of any particle, and a full model with the adapter folded into
the base weights (``merge_and_unload``), for serving stacks that do not load peft adapters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from swarmq.config import BaseModelConfig
from swarmq.engine._common import (
    adapter_config_of,
    config_of,
    layout_of,
    search_in_txn,
)
from swarmq.errors import LayoutError, ModelError, NotFoundError
from swarmq.storage import ArtifactStore, Database, ParticleStateRow
from swarmq.weights import Layout

__all__ = ["MERGED_MARKER", "export_merged", "personal_best_position", "search_base_model"]

#: The provenance file of a merged export; its presence marks a folder swarmq may replace.
MERGED_MARKER = "swarmq_export.json"


def personal_best_position(
    db: Database, store: ArtifactStore, search_id: str, particle: int
) -> tuple[Layout, np.ndarray, dict[str, Any] | None, dict[str, str]]:
    """Particle ``particle``'s personal best after the last applied iteration.

    Returns its layout, vector (hash-verified), the pool's adapter config and provenance
    metadata, like :func:`swarmq.engine.global_best_position`.
    """
    with db.session() as s:
        search = search_in_txn(s, search_id)
        if not 0 <= particle < search.n_particles:
            raise NotFoundError(
                f"search {search_id!r} has particles 0..{search.n_particles - 1}, not {particle}"
            )
        # The particle's newest state whose evaluation was applied (its best columns are set):
        # the last applied iteration's, or in the asynchronous mode, where particles are at
        # iterations of their own, the particle's own newest.
        state = s.scalars(
            select(ParticleStateRow)
            .where(
                ParticleStateRow.search_id == search_id,
                ParticleStateRow.particle == particle,
                ParticleStateRow.best_hash.is_not(None),
            )
            .order_by(ParticleStateRow.iteration.desc())
            .limit(1)
        ).one_or_none()
        if state is None or state.best_hash is None:
            raise NotFoundError(
                f"search {search_id!r} has no evaluated iteration yet; nothing to export"
            )
        info = {
            "swarmq_particle": str(particle),
            "swarmq_iteration": str(state.best_iteration),
            "swarmq_utility": repr(state.best_utility),
            "swarmq_position_hash": state.best_hash,
            "swarmq_config_hash": search.config_hash,
            "swarmq_kind": "personal best",
        }
        layout = layout_of(search.layout_json)
        adapter = adapter_config_of(search.adapter_config_json)
        digest = state.best_hash
    return layout, store.get_vector(digest), adapter, info


def search_base_model(db: Database, search_id: str) -> BaseModelConfig:
    """The base model a search was run on, as recorded in its configuration."""
    with db.session() as s:
        return config_of(search_in_txn(s, search_id).config_json).base_model


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise LayoutError(f"export target {out_dir} is a file; give a folder path")
    if (
        out_dir.is_dir()
        and any(not p.name.startswith(".") for p in out_dir.iterdir())
        and not overwrite
        and not (out_dir / MERGED_MARKER).is_file()
    ):
        raise LayoutError(
            f"export target {out_dir} is not empty and is not an earlier swarmq merged export; "
            "choose an empty folder or pass --overwrite"
        )


def export_merged(
    base: BaseModelConfig,
    layout: Layout,
    vector: np.ndarray,
    adapter_config: dict[str, Any] | None,
    out_dir: Path,
    *,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the base model with a position folded in, as a plain transformers model folder.

    With an adapter pool: the position is loaded as a peft adapter on the base model and
    merged into its weights (``merge_and_unload``). With a pool of full weights: the position's
    tensors replace the base model's own. The folder holds ``config.json``, safetensors
    weights, the base model's tokenizer and :data:`MERGED_MARKER` (provenance);
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it. It is written next to the
    target and renamed into place, so a crash never leaves a half-written model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swarmq.modeling import torch_dtype
    from swarmq.weights import export_adapter, state_dict_from_vector

    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    dtype: Any = torch_dtype(base.dtype)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            base.path, dtype=dtype, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(base.path)
    except Exception as err:  # any loader failure becomes one clear message
        raise ModelError(
            f"cannot load base model {base.path!r} to merge into: {type(err).__name__}: {err}"
        ) from err

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if adapter_config is not None:
            from peft import PeftModel

            adapter_dir = staging / "adapter"
            export_adapter(layout, vector, adapter_dir, adapter_config, metadata=metadata)
            try:
                merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
            except Exception as err:
                raise ModelError(
                    f"cannot merge the adapter into base model {base.path!r}: "
                    f"{type(err).__name__}: {err}"
                ) from err
            shutil.rmtree(adapter_dir)
        else:
            own = model.state_dict()
            tensors = state_dict_from_vector(layout, vector)
            unknown = [k for k in tensors if k not in own]
            if unknown:
                raise ModelError(
                    f"the position has tensors the base model lacks: {unknown[:5]}; the pool "
                    "does not match the base model"
                )
            with torch.no_grad():
                for key, value in tensors.items():
                    if tuple(own[key].shape) != value.shape:
                        raise ModelError(
                            f"tensor {key!r} has shape {list(value.shape)} in the pool but "
                            f"{list(own[key].shape)} in the base model"
                        )
                    own[key].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
            merged = model
        model_dir = staging / "model"
        merged.save_pretrained(str(model_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(model_dir))
        provenance = dict(metadata or {}) | {
            "swarmq_merged_into": base.path,
            "swarmq_merge": "peft merge_and_unload" if adapter_config else "tensors replaced",
        }
        (model_dir / MERGED_MARKER).write_text(
            json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if out_dir.exists():
            old = staging / "previous"
            os.replace(out_dir, old)
        os.replace(model_dir, out_dir)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return out_dir
