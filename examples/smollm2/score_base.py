"""Score the base model itself (no expert) with a search file's utility, on dev and test.

The reference point the search's table leaves out: an adapter position of zeros has
``lora_B = 0``, so the adapted model computes exactly the base model. Run from the repository
root after ``prepare.py``::

    .venv/bin/python examples/smollm2/score_base.py ~/.cache/swarmq/smollm2/search.toml
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from swarmq.config import load_config
from swarmq.modeling import get_evaluator
from swarmq.weights import load_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("config", type=Path, help="a search file (search.toml)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    pool = load_pool(cfg.experts.path, cfg.experts.adapter_config)
    evaluator = get_evaluator(cfg, pool.adapter_config)
    zero = np.zeros(pool.layout.size, dtype=np.float32)
    for split in ("dev", "test"):
        start = time.perf_counter()
        result = evaluator.evaluate(pool.layout, zero, split)
        shown = {k: v for k, v in result.metrics.items() if k in ("n", "correct", "accuracy")}
        print(
            f"base model, {split}: utility {result.value:.4f} {shown} "
            f"({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
