"""Checking an expert pool before a search: everything a search would refuse, found at once.

A search stops at the first problem of its pool; :func:`check_pool` reads every expert and
collects every problem (unreadable files, a different layout, a different adapter config, a
different base model, non-finite weights), so a pool can be fixed in one pass. With a base
model, it also attaches the pool's adapter to that model and checks that every tensor of the
pool fits it, exactly as an evaluation would.

Only safetensors headers and numpy are used, unless a base model is given: then torch and
transformers are imported to load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swarmq.errors import LayoutError, ModelError
from swarmq.weights import (
    ADAPTER_CONFIG,
    CONFIG_FIELDS,
    Layout,
    check_weights,
    discover_experts,
    read_adapter_config,
    read_expert,
)

__all__ = ["ExpertRow", "PoolCheck", "check_pool", "same_base"]

_BASE_FIELD = "base_model_name_or_path"


@dataclass(frozen=True)
class ExpertRow:
    """One expert as the check saw it; ``params`` and ``norm`` are ``None`` when it did not load.

    ``norm`` is the L2 norm of all its tensors together (float64 accumulation); ``non_finite``
    counts NaN and infinite values.
    """

    name: str
    path: Path
    kind: str
    params: int | None
    norm: float | None
    non_finite: int
    base_model: str | None


@dataclass(frozen=True)
class PoolCheck:
    """The result of :func:`check_pool`: a row per expert, the problems, and notes.

    A problem makes the pool unusable by a search; a note is worth knowing but harmless.
    ``adapter_config`` is the first expert's (or the pool folder's) config, ``None`` for full
    weights.
    """

    folder: Path
    rows: tuple[ExpertRow, ...]
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()
    adapter_config: dict[str, Any] | None = field(default=None)
    base_checked: bool = False

    @property
    def ok(self) -> bool:
        """Whether the pool has no problem."""
        return not self.problems


def same_base(a: str, b: str) -> bool:
    """Whether two base model references name the same model.

    Two existing local paths are compared as resolved paths (``./base`` and ``/abs/base`` agree);
    anything else (hub ids) as text.
    """
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def _canonical(value: Any) -> Any:
    # target_modules / modules_to_save order carries no meaning; peft may save either order.
    if isinstance(value, list | tuple | set):
        return sorted(value, key=repr)
    return value


def _non_finite(tensors: dict[str, np.ndarray]) -> tuple[int, str | None, int]:
    """Non-finite values in all tensors, the first tensor (by key) holding some, and its count."""
    total, first, first_count = 0, None, 0
    for key in sorted(tensors):
        bad = int(np.size(tensors[key]) - np.count_nonzero(np.isfinite(tensors[key])))
        if bad and first is None:
            first, first_count = key, bad
        total += bad
    return total, first, first_count


def check_pool(
    folder: str | Path, base: str | Path | None = None, *, load_base: bool = True
) -> PoolCheck:
    """Check the expert pool in ``folder``; with ``base``, also against that base model.

    Raises :class:`LayoutError` only when ``folder`` is not a pool at all (missing, fewer than
    two experts, unknown entries: see :func:`swarmq.weights.discover_experts`); every other
    problem is collected in the result. ``load_base=False`` compares the recorded base model
    names with ``base`` without loading the model.
    """
    folder = Path(folder)
    experts = discover_experts(folder)
    problems: list[str] = []
    notes: list[str] = []
    rows: list[ExpertRow] = []
    layouts: dict[str, Layout] = {}
    vectors: dict[str, np.ndarray] = {}
    configs: dict[str, dict[str, Any]] = {}

    for expert in experts:
        cfg: dict[str, Any] | None = None
        if expert.kind == "peft":
            try:
                cfg = read_adapter_config(expert.path / ADAPTER_CONFIG)
                configs[expert.name] = cfg
            except LayoutError as err:
                problems.append(f"expert {expert.name!r}: {err}")
        try:
            layout, tensors = read_expert(expert)
        except LayoutError as err:
            problems.append(str(err))
            rows.append(ExpertRow(expert.name, expert.path, expert.kind, None, None, 0, None))
            continue
        bad, first_key, first_count = _non_finite(tensors)
        if first_key is not None:
            problems.append(
                f"expert {expert.name!r} ({expert.path}) has {first_count} non-finite value(s) "
                f"in tensor {first_key!r}"
                + (f" ({bad} in all its tensors)" if bad > first_count else "")
                + "; a search cannot move a particle from NaN or infinite weights: retrain it"
            )
        else:
            try:
                check_weights(tensors, f"expert {expert.name!r} ({expert.path})")
            except LayoutError as err:
                problems.append(str(err))
        flat = layout.flatten(tensors)
        layouts[expert.name] = layout
        vectors[expert.name] = flat
        norm = float(np.sqrt(np.dot(flat.astype(np.float64), flat.astype(np.float64))))
        rows.append(
            ExpertRow(
                name=expert.name,
                path=expert.path,
                kind=expert.kind,
                params=layout.size,
                norm=norm,
                non_finite=bad,
                base_model=None if cfg is None else cfg.get(_BASE_FIELD),
            )
        )

    # Layout: every expert against the first one that loaded, naming the first differing key.
    loaded = [e for e in experts if e.name in layouts]
    if loaded:
        ref = loaded[0]
        for expert in loaded[1:]:
            diff = layouts[ref.name].first_difference(layouts[expert.name])
            if diff is not None:
                problems.append(
                    f"expert {expert.name!r} does not share the layout of expert {ref.name!r}: "
                    f"{diff}; every expert must adapt the same modules with the same rank"
                )

    # Adapter config: the fields that change what the tensors mean, and the base model.
    pool_config: dict[str, Any] | None = None
    if configs:
        names = [e.name for e in experts if e.name in configs]
        ref_name = names[0]
        pool_config = configs[ref_name]
        for name in names[1:]:
            for fld in CONFIG_FIELDS:
                if fld == _BASE_FIELD:
                    continue
                a, b = configs[ref_name].get(fld), configs[name].get(fld)
                if _canonical(a) != _canonical(b):
                    problems.append(
                        f"adapter config field {fld!r} is {a!r} in expert {ref_name!r} but "
                        f"{b!r} in expert {name!r}; train every expert with the same settings"
                    )
    elif (folder / ADAPTER_CONFIG).is_file():
        try:
            pool_config = read_adapter_config(folder / ADAPTER_CONFIG)
        except LayoutError as err:
            problems.append(str(err))

    recorded: dict[str, str | None] = (
        {name: cfg.get(_BASE_FIELD) for name, cfg in configs.items()}
        if configs
        else ({folder.name: pool_config.get(_BASE_FIELD)} if pool_config is not None else {})
    )
    base_text = None if base is None else str(base)
    if base_text is not None:
        for name, value in recorded.items():
            if not value:
                problems.append(f"expert {name!r} names no base model ({_BASE_FIELD} is empty)")
            elif not same_base(value, base_text):
                problems.append(
                    f"expert {name!r} was trained on base model {value!r}, not {base_text!r}"
                )
    elif recorded:
        ref_name, ref_base = next(iter(recorded.items()))
        for name, value in recorded.items():
            if not value:
                problems.append(f"expert {name!r} names no base model ({_BASE_FIELD} is empty)")
            elif ref_base and not same_base(value, ref_base):
                problems.append(
                    f"expert {name!r} names base model {value!r} but expert {ref_name!r} names "
                    f"{ref_base!r}; every expert must adapt the same base model"
                )

    # Harmless but worth saying: identical experts add nothing to a swarm, and an adapter
    # whose lora_B tensors are all zero leaves the base model unchanged.
    names_loaded = [e.name for e in loaded]
    for i, a in enumerate(names_loaded):
        for b in names_loaded[i + 1 :]:
            if layouts[a] == layouts[b] and np.array_equal(vectors[a], vectors[b]):
                notes.append(f"experts {a!r} and {b!r} have identical weights")
    for name in names_loaded:
        tensors = layouts[name].unflatten(vectors[name])
        b_keys = [k for k in tensors if "lora_B" in k]
        if b_keys and all(not np.any(tensors[k]) for k in b_keys):
            notes.append(f"expert {name!r} has all-zero lora_B tensors: it equals the base model")

    base_checked = False
    if base_text is not None and load_base and not problems and loaded:
        problem = _fit_base(base_text, pool_config, layouts[loaded[0].name], vectors)
        if problem is not None:
            problems.append(problem)
        base_checked = True

    return PoolCheck(
        folder=folder,
        rows=tuple(rows),
        problems=tuple(problems),
        notes=tuple(notes),
        adapter_config=pool_config,
        base_checked=base_checked,
    )


def _fit_base(
    base: str,
    adapter_config: dict[str, Any] | None,
    layout: Layout,
    vectors: dict[str, np.ndarray],
) -> str | None:
    """Load ``base`` with the pool's adapter and write every expert into it, as a search does."""
    from swarmq.config import BaseModelConfig
    from swarmq.modeling import ResidentModel

    try:
        model = ResidentModel.load(BaseModelConfig(path=base, device="cpu"), adapter_config)
        for name, vector in vectors.items():
            try:
                model.set_position(layout, vector)
            except (ModelError, LayoutError) as err:
                return f"expert {name!r} does not fit base model {base!r}: {err}"
    except ModelError as err:
        return str(err)
    return None
