"""Merging experts with peft's combination methods, for the baselines of the final table.

Task arithmetic, TIES, DARE-TIES and DARE-linear are peft's own implementations, never
rewritten here:

* a LoRA pool goes through ``add_weighted_adapter`` with ``combination_type`` ``linear``,
  ``ties``, ``dare_ties`` or ``dare_linear`` (:meth:`ResidentModel.merge_adapters`). These four
  keep the rank and the tensors of the pool's adapter (``cat`` would add the ranks, the ``*_svd``
  types re-factor the summed update ``B @ A`` by SVD), so the merged adapter is a position in the
  search's own layout. peft combines ``lora_A`` and ``lora_B`` separately, like the swarm: each
  expert's weight ``w`` enters both factors as ``sqrt(w * scaling)`` (its sign on ``lora_A``
  only), and the merged adapter is given ``lora_alpha = r`` (scaling 1). Both factors are
  divided by ``sqrt(scaling)`` of the pool's adapter afterwards, so that the position means
  under the pool's ``adapter_config`` what peft's merged adapter means under its own.
* a pool of full-weight files goes through the same functions of ``peft.utils.merge_utils``
  that ``add_weighted_adapter`` calls, applied to each expert's task vector (its weights minus
  the base model's, read from the base model's safetensors files), then added to the base.

DARE drops entries at random: the draws come from torch's generator seeded with the given
seed inside :func:`torch.random.fork_rng`, so a merge is reproducible and leaves the process's
own random state alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from swarmq.errors import ModelError
from swarmq.weights import Layout

__all__ = ["MERGE_METHODS", "forked", "merge_task_vectors", "read_base_tensors", "seeded"]

#: The merge baselines and peft's ``combination_type`` for each.
MERGE_METHODS: dict[str, str] = {
    "task_arithmetic": "linear",
    "ties": "ties",
    "dare_ties": "dare_ties",
    "dare_linear": "dare_linear",
}


def combination_type(method: str) -> str:
    """peft's ``combination_type`` of a merge baseline, or :class:`ModelError`."""
    try:
        return MERGE_METHODS[method]
    except KeyError:
        raise ModelError(
            f"unknown merge method {method!r}; one of {', '.join(MERGE_METHODS)}"
        ) from None


@contextmanager
def forked(device: str) -> Iterator[None]:
    """A block after which torch's random state (CPU, and ``device``'s) is what it was."""
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """A block whose torch random draws come from ``seed``; the process's state is restored."""
    with forked(device):
        torch.manual_seed(seed)
        yield


def merge_task_vectors(
    layout: Layout,
    base: np.ndarray,
    vectors: Sequence[np.ndarray],
    weights: Sequence[float],
    method: str,
    density: float,
    seed: int,
) -> np.ndarray:
    """Merge full-weight positions as task vectors around ``base`` (see the module docstring).

    Per tensor of the layout: ``base + merge([x_i - base], weights)`` with peft's
    ``merge_utils`` function of ``method``; returns a float32 position of ``layout``.
    """
    from peft.utils import merge_utils

    kind = combination_type(method)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    base_t = layout.unflatten(np.asarray(base, dtype=np.float32))
    experts = [layout.unflatten(np.asarray(v, dtype=np.float32)) for v in vectors]
    merged: dict[str, np.ndarray] = {}
    with seeded(seed, "cpu"):
        for spec in layout.tensors:
            b = torch.from_numpy(np.array(base_t[spec.key]))
            tasks = [torch.from_numpy(np.array(e[spec.key])) - b for e in experts]
            if kind == "linear":
                delta = merge_utils.task_arithmetic(tasks, w)
            elif kind == "ties":
                delta = merge_utils.ties(tasks, w, density)
            elif kind == "dare_ties":
                delta = merge_utils.dare_ties(tasks, w, density)
            else:
                delta = merge_utils.dare_linear(tasks, w, density)
            merged[spec.key] = (b + delta).numpy()
    return layout.flatten(merged)


def read_base_tensors(path: str, layout: Layout) -> np.ndarray:
    """The base model's own values of the layout's tensors, from its ``*.safetensors`` files.

    A full-weight merge needs the weights every expert departed from; they are read from disk
    because the resident model's copy is overwritten by every evaluation.
    """
    from safetensors import safe_open

    folder = Path(path).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        raise ModelError(
            f"merging full-weight experts needs the base model's own weights, read from the "
            f"*.safetensors files of a local folder; {path!r} has none"
        )
    wanted = set(layout.keys)
    found: dict[str, np.ndarray] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118  (a safe_open handle is not a dict)
                if key in wanted:
                    found[key] = f.get_tensor(key).float().numpy()
    missing = sorted(wanted - set(found))
    if missing:
        raise ModelError(
            f"the base model's files in {path!r} lack {len(missing)} tensor(s) of the pool, "
            f"e.g. {missing[0]!r}; the experts do not adapt this base model"
        )
    return layout.flatten(found)
