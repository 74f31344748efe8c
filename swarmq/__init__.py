"""swarmq: Model Swarms over LLM expert adapters, as a crash-safe job queue.

The packages, by concern:

* :mod:`swarmq.swarm` - the algorithm, pure and I/O-free;
* :mod:`swarmq.weights` - the weight space: expert pools, layouts, export;
* :mod:`swarmq.objectives` - utilities (what the swarm maximises) and their data;
* :mod:`swarmq.modeling` - the resident base model that evaluates positions;
* :mod:`swarmq.storage` - the database and the artifact store;
* :mod:`swarmq.engine` - create, evaluate, coordinate and recover searches;
* :mod:`swarmq.execution` - Celery tasks and the embedded runner;
* :mod:`swarmq.reporting` - reports, baselines, audit and history of a search;
* :mod:`swarmq.cli` - the ``swarmq`` command.

The front door for Python programs is this module itself::

    import swarmq

    result = swarmq.run_search("search.toml")  # runs in this process, recorded like swarmq run
    print(result.status, result.final.global_best.test)

Its names are imported on first use, so ``import swarmq`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "run_search": "swarmq._api",
    "resume_search": "swarmq._api",
    "search_result": "swarmq._api",
    "list_searches": "swarmq._api",
    "SearchResult": "swarmq._api",
    "SearchConfig": "swarmq.config",
    "load_config": "swarmq.config",
    "Settings": "swarmq.settings",
    "load_settings": "swarmq.settings",
    "Utility": "swarmq.objectives",
    "UtilityResult": "swarmq.objectives",
    "register_utility": "swarmq.objectives",
    "SwarmqError": "swarmq.errors",
}

__all__ = [
    "SearchConfig",
    "SearchResult",
    "Settings",
    "SwarmqError",
    "Utility",
    "UtilityResult",
    "__version__",
    "list_searches",
    "load_config",
    "load_settings",
    "register_utility",
    "resume_search",
    "run_search",
    "search_result",
]

if TYPE_CHECKING:
    from swarmq._api import (
        SearchResult,
        list_searches,
        resume_search,
        run_search,
        search_result,
    )
    from swarmq.config import SearchConfig, load_config
    from swarmq.errors import SwarmqError
    from swarmq.objectives import Utility, UtilityResult, register_utility
    from swarmq.settings import Settings, load_settings


def __getattr__(name: str) -> Any:
    home = _EXPORTS.get(name)
    if home is None:
        raise AttributeError(f"module 'swarmq' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
