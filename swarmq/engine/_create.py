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


def _check_base_model(path: str) -> None:
    """Refuse a base model that is neither an existing folder nor possibly a hub id.

    Without this, a typo in the path is found by the first evaluation, after the search is
    recorded; a hub id can only be checked by loading it, so it is let through.
    """
    if Path(path).expanduser().exists() or (_HUB_ID.match(path) and ".." not in path):
        return
    raise ConfigError(
        f"base_model.path {path!r} does not exist; give the folder of a model saved with "
        "save_pretrained, or a hub id such as org/name"
    )


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
) -> str:
    """Record a new search and its iteration-0 evaluations; return its id.

    Every input is validated before anything is written: the expert pool (same layout), the
    population size, and (unless ``check_objective`` is false) the utility and its dataset.
    Nothing is dispatched here: the caller sends the pending work. ``group_id`` makes the
    search its seed's member of a seed group (see :mod:`swarmq.engine._groups`); a group
    already holding a search of this seed refuses a second one (a unique constraint).
    """
    pool = load_pool(config.experts.path, config.experts.adapter_config)
    if check_objective:
        from swarmq.modeling import check_objective as _check

        _check(config)
        _check_base_model(config.base_model.path)
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
