"""The offline demo: a tiny base model, four LoRA experts and a target task, built from scratch.

``swarmq demo`` calls :func:`build_demo_assets` (cached; torch is imported only when a build is
needed) and then runs an ordinary search over the built files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmq.demo._build import DemoAssets

__all__ = ["DemoAssets", "build_demo_assets", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$SWARMQ_CACHE/demo``, or ``~/.cache/swarmq/demo``."""
    import os

    env = os.environ.get("SWARMQ_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "swarmq"
    return base / "demo"


def build_demo_assets(cache_dir: Path, **kwargs: Any) -> DemoAssets:
    """Build (or reuse) the demo's base model, experts, dataset and search file."""
    from swarmq.demo._build import build_demo_assets as build

    return build(cache_dir, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "DemoAssets":
        from swarmq.demo._build import DemoAssets

        return DemoAssets
    raise AttributeError(name)
