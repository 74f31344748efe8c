"""``swarmq demo``: a self-contained Model Swarms run on assets built offline in seconds.

:func:`build_demo_assets` builds, into a cache folder, a tiny Llama base model with a word-level
tokenizer, a pool of LoRA experts (one per synthetic skill), a target task that mixes the skills
(dev and test splits in the exact-match format) and a ready ``search.toml``. The build is seeded
and idempotent: a complete build of the same :data:`DEMO_VERSION` is reused.

torch, transformers and peft are imported only when a build runs, so importing this package (as
the CLI does) stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmq.demo._build import DemoAssets

__all__ = ["DEMO_VERSION", "DemoAssets", "build_demo_assets", "default_cache_dir"]

# Bump whenever anything that changes the built files changes: a cache holding another version is
# rebuilt rather than reused.
DEMO_VERSION = "swarmq-demo-1"


def default_cache_dir() -> Path:
    """``$SWARMQ_CACHE/demo``, or ``~/.cache/swarmq/demo`` when ``SWARMQ_CACHE`` is unset."""
    env = os.environ.get("SWARMQ_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "swarmq"
    return base / "demo"


def build_demo_assets(
    cache_dir: Path,
    *,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> DemoAssets:
    """Build (or reuse) the demo assets in ``cache_dir``; see :mod:`swarmq.demo._build`."""
    from swarmq.demo._build import build_demo_assets as build

    return build(cache_dir, progress=progress, force=force)


def __getattr__(name: str) -> Any:
    # DemoAssets lives with the builder; import it (and torch) only when someone asks for it.
    if name == "DemoAssets":
        from swarmq.demo._build import DemoAssets

        return DemoAssets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
