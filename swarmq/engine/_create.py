"""Creating a search: validate everything, expand the population, record iteration 0."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from swarmq.config import SearchConfig
from swarmq.engine._common import new_search_id, params_of, put_vectors_in_txn
from swarmq.engine._runtime import Runtime
from swarmq.errors import ConfigError, NumericError
from swarmq.storage import EvaluationRow, IterationRow, ParticleRow, ParticleStateRow, SearchRow
from swarmq.swarm import expand_population, initial_velocity
from swarmq.weights import load_pool

__all__ = ["create_search"]

# A hub repository id: "name" or "org/name" (letters, digits, "_", ".", "-").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


# A [base_model] device: what select_device accepts (checked here without importing torch).
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _check_base_model(config: SearchConfig, *, runs_here: bool) -> None:
    """Refuse a base model, device or chat template that the first evaluation would fail on.

    Found only then, the search would already be recorded (and failed). What can be checked
    without loading the model is: the path is a model folder (it holds ``config.json``) or a
    hub id; the device is one swarmq knows; and when the utility sends prompts through the
    chat template (``chat_template = true``), the model's tokenizer has one. With
    ``runs_here`` (the embedded mode: this process evaluates), a hub id must also be in the
    local cache and the device must exist on this machine; a search submitted to workers is
    not judged by the submitting machine's GPUs or cache.
    """
    path = config.base_model.path
    local = Path(path).expanduser()
    folder: Path | None = None
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ConfigError(
                f"base_model.path {path!r} is not a model folder (it holds no config.json); "
                "give the folder of a model saved with save_pretrained, or a hub id"
            )
        folder = local
    elif _HUB_ID.match(path) and ".." not in path:
        folder = _hub_cache_folder(path)
        if folder is None and runs_here:
            raise ConfigError(
                f"base_model.path {path!r} is neither a folder nor a model in the local hub "
                f"cache; download it first (hf download {path}) or give its folder"
            )
    else:
        raise ConfigError(
            f"base_model.path {path!r} does not exist; give the folder of a model saved with "
            "save_pretrained, or a hub id such as org/name"
        )
    device = config.base_model.device
    if not _DEVICE.match(device.strip().lower()):
        raise ConfigError(
            f"base_model.device {device!r} is not a device; use 'auto', 'cpu', 'cuda', "
            "'cuda:N' or 'mps'"
        )
    if runs_here:
        from swarmq.modeling import select_device

        select_device(device)  # a GPU this machine does not have: ModelError, one line
    wants_template = config.objective.options.get("chat_template") is True
    if folder is not None and wants_template and not _has_chat_template(folder):
        raise ConfigError(
            f"objective.options.chat_template = true, but the tokenizer of base model "
            f"{path!r} has no chat template; set chat_template = false or use a model "
            "whose tokenizer has one"
        )


def _hub_cache_folder(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model, or ``None`` when it is not in the cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer saved in ``folder`` carries a chat template (in any of the files
    transformers saves one to)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    if (folder / "additional_chat_templates").is_dir():
        return True
    try:
        data = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("chat_template"))


# What one particle costs in memory while a search is created and coordinated: its position,
# velocity, personal best and the new position and velocity of an update (float32 each), plus
# its rows and hashes as Python objects (a measured few KiB, rounded up).
_VECTORS_PER_PARTICLE = 5
_BYTES_PER_PARTICLE_ROWS = 8 * 1024


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def _check_population_fits(n: int, size: int, pool_path: str | Path) -> None:
    """Refuse a population that cannot fit in this machine's memory, with the estimate.

    Without this, ``particles = 10000000`` went on to allocate until the process died.
    """
    need = n * (size * 4 * _VECTORS_PER_PARTICLE + _BYTES_PER_PARTICLE_ROWS)
    available = _available_memory()
    if available is not None and need > available:
        raise ConfigError(
            f"search.particles = {n} needs about {need / 2**30:,.1f} GiB of memory "
            f"({n} particles x ({_VECTORS_PER_PARTICLE} vectors of {size:,} float32 "
            f"parameters of the experts in {pool_path} + rows)), more than the "
            f"{available / 2**30:,.1f} GiB available here; lower search.particles"
        )


def create_search(
    rt: Runtime,
    config: SearchConfig,
    *,
    check_objective: bool = True,
    group_id: str | None = None,
    runs_here: bool = False,
) -> str:
    """Record a new search and its iteration-0 evaluations; return its id.

    Every input is validated before anything is written: the expert pool (same layout), the
    population size, and (unless ``check_objective`` is false) the utility and its dataset.
    Nothing is dispatched here: the caller sends the pending work. ``group_id`` makes the
    search its seed's member of a seed group (see :mod:`swarmq.engine._groups`); a group
    already holding a search of this seed refuses a second one (a unique constraint).
    ``runs_here`` says this process will evaluate it (the embedded mode): the base model must
    then be loadable here (a cached hub id, an existing device).
    """
    pool = load_pool(config.experts.path, config.experts.adapter_config)
    if check_objective:
        from swarmq.modeling import check_objective as _check

        _check(config)
        _check_base_model(config, runs_here=runs_here)
    n_experts = len(pool.experts)
    n = config.search.particles or n_experts
    if n < n_experts:
        raise ConfigError(
            f"search.particles = {n} is below the number of experts ({n_experts}) in "
            f"{config.experts.path}; set it to at least {n_experts} or leave it out"
        )
    _check_population_fits(n, pool.layout.size, config.experts.path)
    params = params_of(config)
    seed = config.search.seed
    positions, lineage = expand_population(pool.vectors, n, seed)
    if params.initial_velocity == "best":
        velocities = None  # needs g: set by the coordinator after iteration 0
    else:
        velocities = [
            initial_velocity(params.initial_velocity, positions, i, seed) for i in range(n)
        ]
    # The experts' weights are bounded (load_pool), but chains of extrapolating crossovers
    # multiply them: refuse a population that already overflows before recording it.
    for i in range(n):
        starting = [("position", positions[i])]
        if velocities is not None:
            starting.append(("velocity", velocities[i]))
        for what, vector in starting:
            if not np.isfinite(vector).all():
                raise NumericError(
                    f"the starting {what} of particle {i} is not finite; the experts' weights "
                    f"are too large for {n} particles made by crossover: lower "
                    "search.particles or rescale the experts"
                )

    search_id = new_search_id()
    with rt.db.session() as s:
        x_hashes = put_vectors_in_txn(s, rt.store, (("position", x) for x in positions))
        v_hashes: list[str | None] = (
            list(put_vectors_in_txn(s, rt.store, (("velocity", v) for v in velocities)))
            if velocities is not None
            else [None] * n
        )
        s.add(
            SearchRow(
                id=search_id,
                name=config.search.name,
                status="running",
                config_json=config.to_json(),
                config_hash=config.fingerprint(),
                seed=seed,
                n_particles=n,
                n_experts=n_experts,
                layout_json=pool.layout.to_json(),
                adapter_config_json=None
                if pool.adapter_config is None
                else json.dumps(pool.adapter_config, sort_keys=True),
                current_iteration=0,
                group_id=group_id,
            )
        )
        s.flush()
        for i, parent in enumerate(lineage):
            s.add(
                ParticleRow(
                    search_id=search_id,
                    index=i,
                    expert_name=pool.experts[i].name if i < n_experts else None,
                    parent_first=None if parent is None else parent.first,
                    parent_second=None if parent is None else parent.second,
                    parent_weight=None if parent is None else parent.weight,
                )
            )
        # An asynchronous search has no barrier: its iterations are "applied" from the start
        # (see swarmq.engine._asynchronous).
        status = "applied" if config.swarm.mode == "asynchronous" else "evaluating"
        s.add(IterationRow(search_id=search_id, number=0, status=status, step_length=None))
        s.flush()
        for i in range(n):
            s.add(
                ParticleStateRow(
                    search_id=search_id,
                    iteration=0,
                    particle=i,
                    position_hash=x_hashes[i],
                    velocity_hash=v_hashes[i],
                    restarted=False,
                    update={"initial_velocity": params.initial_velocity},
                )
            )
            s.add(
                EvaluationRow(
                    search_id=search_id,
                    iteration=0,
                    particle=i,
                    split="dev",
                    position_hash=x_hashes[i],
                    status="pending",
                    attempts=0,
                )
            )
    return search_id
