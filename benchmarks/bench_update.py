"""Benchmark: the coordinator's update of N particles of P float32 parameters.

Measured side by side in one run, as ratios to a plain numpy copy of the same bytes
(N * P * 4 bytes, one ``np.copyto`` per particle):

* ``math``: the pure update of every particle (``swarmq.swarm.apply_update``), in memory;
* ``coordinator``: a whole ``coordinate_iteration`` over SQLite and a local artifact store:
  reading x, v, p, g and g_w of every particle (hash-verified), the update, and writing
  the new positions and velocities durably (fsync) plus the database rows.

Run: ``.venv/bin/python benchmarks/bench_update.py [--particles 20] [--params 1000000]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from swarmq.config import parse_config
from swarmq.engine import coordinate_iteration, create_search, run_evaluation
from swarmq.execution import EmbeddedRunner
from swarmq.settings import Settings
from swarmq.swarm import SwarmParams, apply_update, draw_factors, update_coefficients


def timeit(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--particles", type=int, default=20)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n, size = args.particles, args.params
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(size, dtype=np.float32) for _ in range(n)]
    vs = [rng.standard_normal(size, dtype=np.float32) for _ in range(n)]
    ps = [rng.standard_normal(size, dtype=np.float32) for _ in range(n)]
    g, gw = rng.standard_normal(size, dtype=np.float32), rng.standard_normal(size, dtype=np.float32)
    dst = [np.empty(size, dtype=np.float32) for _ in range(n)]
    params = SwarmParams()

    def copy() -> None:
        for i in range(n):
            np.copyto(dst[i], xs[i])

    def math() -> None:
        for i in range(n):
            coeffs = update_coefficients(draw_factors(0, 1, i, True), params)
            apply_update(xs[i], vs[i], ps[i], g, gw, coeffs, 1.0)

    t_copy = timeit(copy, args.repeat)
    t_math = timeit(math, args.repeat)

    coord_times = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        experts = root / "experts"
        experts.mkdir()
        for i in range(n):
            save_file({"w": xs[i]}, str(experts / f"e{i:02d}.safetensors"))

        def score(
            _c: Any, _a: Any, _l: Any, vector: np.ndarray, _s: str
        ) -> tuple[float, dict[str, Any]]:
            return float(vector[:100].sum()), {}

        for r in range(args.repeat):
            runner = EmbeddedRunner(
                Settings(f"sqlite:///{root / f'db{r}.sqlite'}", root / f"art{r}"), evaluate=score
            )
            cfg = parse_config(
                {
                    "experts": {"path": str(experts)},
                    "base_model": {"path": "unused"},
                    "objective": {"utility": "exact_match", "dataset": str(root / "unused.json")},
                }
            )
            sid = create_search(runner.runtime, cfg, check_objective=False)
            for i in range(n):
                run_evaluation(runner.runtime, sid, 0, i)
            t0 = time.perf_counter()
            assert coordinate_iteration(runner.runtime, sid, 0).status == "applied"
            coord_times.append(time.perf_counter() - t0)
    t_coord = statistics.median(coord_times)

    mb = n * size * 4 / 2**20
    print(
        f"N={n} particles x {size} float32 parameters ({mb:.0f} MiB of positions), "
        f"median of {args.repeat}"
    )
    print(f"{'numpy copy of the positions':<44} {t_copy * 1e3:9.1f} ms   1.00x")
    print(
        f"{'update math (apply_update, in memory)':<44} {t_math * 1e3:9.1f} ms "
        f"{t_math / t_copy:6.2f}x"
    )
    print(
        f"{'coordinator (read+verify, update, fsync, db)':<44} {t_coord * 1e3:9.1f} ms "
        f"{t_coord / t_copy:6.2f}x"
    )


if __name__ == "__main__":
    main()
