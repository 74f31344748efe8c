"""Finding and reading an expert pool: peft adapter folders or plain ``.safetensors`` files.

Only safetensors is ever read: pickled weights (``.bin``, ``.pt``) can run code when loaded, so
they are refused rather than converted. torch is imported lazily, and only for BF16 tensors,
which numpy cannot represent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from swarmq.errors import LayoutError
from swarmq.weights._layout import DTYPE_SIZES, Layout

__all__ = [
    "ADAPTER_CONFIG",
    "CONFIG_FIELDS",
    "MAX_WEIGHT",
    "Expert",
    "Pool",
    "check_weights",
    "discover_experts",
    "load_pool",
    "read_adapter_config",
    "read_expert",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Adapter config fields that change what the same tensors mean: two experts that differ on one
# of them cannot be averaged meaningfully even when their shapes agree.
CONFIG_FIELDS = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "use_rslora",
    "use_dora",
    "base_model_name_or_path",
    "fan_in_fan_out",
    "bias",
    "modules_to_save",
    "task_type",
)

#: The largest weight magnitude accepted: the square root of float32's maximum (about 1.8e19),
#: so that the product of two weights, and the sums of the swarm update, stay finite. Larger
#: values (3e38, say) are finite when read but overflow to infinity in the first update, after
#: which every position is NaN and every utility meaningless.
MAX_WEIGHT = float(np.sqrt(np.finfo(np.float32).max))

_PICKLED_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
_ACCEPTED = (
    f"a pool folder holds either subfolders with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
    "(peft adapters) or *.safetensors files (plain experts), plus an optional "
    f"{ADAPTER_CONFIG}; pickled .bin/.pt weights are refused: convert them to safetensors"
)


@dataclass(frozen=True)
class Expert:
    """One expert of the pool: a peft adapter folder or a plain ``.safetensors`` file."""

    name: str
    path: Path
    kind: Literal["peft", "safetensors"]

    @property
    def weights_file(self) -> Path:
        """The safetensors file holding this expert's tensors."""
        return self.path / ADAPTER_WEIGHTS if self.kind == "peft" else self.path


@dataclass(frozen=True)
class Pool:
    """The experts of a search on one layout.

    ``vectors[i]`` is the flat float32 position of ``experts[i]``; ``adapter_config`` is the
    peft config written next to exported adapters (``None`` for a pool of full weights).
    """

    experts: list[Expert]
    layout: Layout
    vectors: list[np.ndarray]
    adapter_config: dict[str, Any] | None


def _classify(entry: Path) -> Expert:
    if entry.is_dir():
        if (entry / ADAPTER_CONFIG).is_file() and (entry / ADAPTER_WEIGHTS).is_file():
            return Expert(entry.name, entry, "peft")
        found = sorted(p.name for p in entry.iterdir() if not p.name.startswith("."))
        pickled = [n for n in found if Path(n).suffix in _PICKLED_SUFFIXES]
        if pickled:
            why = f"it holds pickled weights {pickled}, which are refused (safetensors only)"
        elif entry.is_symlink():
            # A link may lead anywhere (/etc): what is there is not the pool's to print.
            why = f"it is a link to a folder without {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        else:
            shown = found[:8] + ([f"... {len(found) - 8} more"] if len(found) > 8 else [])
            why = f"it lacks {ADAPTER_CONFIG} or {ADAPTER_WEIGHTS} (found {shown})"
        raise LayoutError(f"expert folder {entry} is not a peft adapter: {why}; {_ACCEPTED}")
    if entry.is_file() and entry.suffix == ".safetensors":
        return Expert(entry.stem, entry, "safetensors")
    if entry.suffix in _PICKLED_SUFFIXES:
        raise LayoutError(
            f"{entry} holds pickled weights, which are refused (safetensors only); {_ACCEPTED}"
        )
    raise LayoutError(f"unexpected entry {entry} in the expert pool; {_ACCEPTED}")


def discover_experts(folder: Path) -> list[Expert]:
    """List the experts of a pool folder, sorted by name.

    Hidden entries and a top-level ``adapter_config.json`` (the config of a plain pool) are
    skipped; any other entry that is not an expert is an error rather than silently ignored,
    so a misplaced file never changes the pool unnoticed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LayoutError(
            f"expert pool folder {folder} does not exist or is not a folder; "
            "set experts.path to a folder of expert adapters"
        )
    experts = [
        _classify(entry)
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and not (entry.name == ADAPTER_CONFIG and entry.is_file())
    ]
    experts.sort(key=lambda e: e.name)
    names = [e.name for e in experts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LayoutError(f"expert names {dupes} appear twice in {folder}; rename one of each")
    if len(experts) < 2:
        raise LayoutError(
            f"expert pool {folder} holds {len(experts)} expert(s); a swarm needs at least 2: "
            f"add more experts ({_ACCEPTED})"
        )
    kinds = {e.kind for e in experts}
    if len(kinds) > 1:
        peft = [e.name for e in experts if e.kind == "peft"]
        plain = [e.name for e in experts if e.kind == "safetensors"]
        raise LayoutError(
            f"expert pool {folder} mixes peft adapter folders {peft} and plain safetensors "
            f"files {plain}; use one kind only"
        )
    return experts


def read_adapter_config(path: Path) -> dict[str, Any]:
    """The adapter config (a JSON object) in ``path``; :class:`LayoutError` names a problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LayoutError(f"adapter config {path} does not exist; give an existing file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"adapter config {path} is not readable JSON ({exc}); fix it") from None
    if not isinstance(data, dict):
        raise LayoutError(
            f"adapter config {path} must hold a JSON object, not {type(data).__name__}"
        )
    return data


def read_expert(expert: Expert) -> tuple[Layout, dict[str, np.ndarray]]:
    """Read an expert's tensors with safetensors (never a pickle loader).

    Returns the layout, recording each tensor's stored dtype name, and the tensors as numpy
    arrays (BF16 ones as float32, since numpy has no bfloat16).
    """
    from safetensors import SafetensorError, safe_open

    path = expert.weights_file
    try:
        # The header alone gives dtypes and shapes, so a bad tensor is refused before loading.
        with safe_open(str(path), framework="np") as f:
            specs: dict[str, tuple[tuple[int, ...], str]] = {}
            for key in f.keys():  # noqa: SIM118  (a safe_open handle is not a dict)
                piece = f.get_slice(key)
                specs[key] = (tuple(piece.get_shape()), piece.get_dtype())
        for key in sorted(specs):
            dtype = specs[key][1]
            if dtype not in DTYPE_SIZES:
                raise LayoutError(
                    f"tensor {key!r} of expert {expert.name!r} ({path}) has dtype {dtype}; only "
                    f"floating tensors {sorted(DTYPE_SIZES)} can be searched: remove it"
                )
        layout = Layout.from_shapes(specs)
        if any(dtype == "BF16" for _, dtype in specs.values()):
            try:
                import torch  # noqa: F401  (safe_open's "pt" framework needs it)
            except ImportError:
                raise LayoutError(
                    f"expert {expert.name!r} ({path}) stores BF16 tensors, which need torch to "
                    "read: install torch or re-save the expert in F32/F16"
                ) from None
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k).float().numpy() for k in f.keys()}  # noqa: SIM118
        else:
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
    except SafetensorError as exc:
        raise LayoutError(
            f"expert {expert.name!r}: {path} is not a valid safetensors file ({exc}); re-save it"
        ) from None
    except OSError as exc:
        raise LayoutError(f"expert {expert.name!r}: cannot read {path} ({exc})") from None
    return layout, tensors


def check_weights(tensors: dict[str, np.ndarray], owner: str) -> None:
    """Refuse NaN, infinite, or overflowing (above :data:`MAX_WEIGHT`) weights, naming the first.

    ``owner`` says whose tensors they are (an expert and its file).
    """
    for key in sorted(tensors):
        values = np.asarray(tensors[key])
        finite = np.isfinite(values)
        big = np.abs(np.where(finite, values, 0)) > MAX_WEIGHT
        bad = ~finite | big
        if not bad.any():
            continue
        index = tuple(int(k) for k in np.argwhere(bad)[0])
        value = float(values[index])
        count = int(bad.sum())
        what = "not finite" if not np.isfinite(value) else f"above {MAX_WEIGHT:.3g} in magnitude"
        raise LayoutError(
            f"tensor {key!r} of {owner} holds {count} value(s) that are {what} (the first, "
            f"{value!r}, at index {list(index)}); a swarm update would turn every position into "
            "NaN: fix or retrain the expert, or remove it from the pool"
        )


def _canonical(value: Any) -> Any:
    # target_modules / modules_to_save order carries no meaning; peft may save either order.
    if isinstance(value, list | tuple | set):
        return sorted(value, key=repr)
    return value


def _check_configs(experts: list[Expert], configs: list[dict[str, Any]]) -> None:
    first, first_cfg = experts[0], configs[0]
    for expert, cfg in zip(experts[1:], configs[1:], strict=True):
        for field in CONFIG_FIELDS:
            a, b = first_cfg.get(field), cfg.get(field)
            if _canonical(a) != _canonical(b):
                raise LayoutError(
                    f"adapter config field {field!r} is {a!r} in expert {first.name!r} "
                    f"({first.path}) but {b!r} in expert {expert.name!r} ({expert.path}); "
                    "every expert must be trained with the same adapter settings"
                )


def load_pool(folder: Path, adapter_config: Path | None = None) -> Pool:
    """Discover and read every expert of ``folder`` into one weight space.

    All experts must share the first expert's layout (keys, shapes, dtypes), and peft experts
    must agree on the adapter config fields in :data:`CONFIG_FIELDS`. The pool's adapter config
    is the first peft expert's; for plain safetensors experts it is read from ``adapter_config``
    when given, else from ``folder/adapter_config.json`` when present, else ``None`` (full
    weights). ``adapter_config`` is ignored for a peft pool, whose experts carry their own.
    """
    folder = Path(folder)
    experts = discover_experts(folder)
    layouts: list[Layout] = []
    vectors: list[np.ndarray] = []
    for expert in experts:
        layout, tensors = read_expert(expert)
        if layouts:
            diff = layouts[0].first_difference(layout)
            if diff is not None:
                raise LayoutError(
                    f"expert {expert.name!r} ({expert.path}) does not share the layout of "
                    f"expert {experts[0].name!r} ({experts[0].path}): {diff}; every expert must "
                    "adapt the same modules with the same rank and dtype"
                )
        check_weights(tensors, f"expert {expert.name!r} ({expert.weights_file})")
        layouts.append(layout)
        vectors.append(layout.flatten(tensors))
    config: dict[str, Any] | None
    if experts[0].kind == "peft":
        configs = [read_adapter_config(e.path / ADAPTER_CONFIG) for e in experts]
        _check_configs(experts, configs)
        config = configs[0]
    elif adapter_config is not None:
        config = read_adapter_config(Path(adapter_config))
    elif (folder / ADAPTER_CONFIG).is_file():
        config = read_adapter_config(folder / ADAPTER_CONFIG)
    else:
        config = None
    return Pool(experts=experts, layout=layouts[0], vectors=vectors, adapter_config=config)
