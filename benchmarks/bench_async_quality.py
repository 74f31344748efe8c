"""Benchmark: search quality of the asynchronous swarm against the synchronous one, on the demo.

Both modes run the demo's search (``swarmq demo``: 10 particles over four LoRA experts of a tiny
Llama, exact match on a task mixing the experts' skills) with patience above ``max_iterations``,
so that every search makes the same number of dev evaluations (N * (max_iterations + 1) = 130),
once per seed, in the embedded runner (one evaluation at a time, in the order sent; the
asynchronous mode then applies results in a round robin that drifts as particles stop and
restart). Reported per mode: the global best's dev and test accuracy, mean and sample standard
deviation over the seeds, and each seed's values.

Run (CPU; builds the demo's assets first if the cache lacks them)::

    .venv/bin/python benchmarks/bench_async_quality.py --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

MODES = ("synchronous", "asynchronous")


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated search seeds")
    ap.add_argument("--cache", type=Path, help="the demo's cache folder (default: swarmq's)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    import torch

    torch.set_num_threads(1)

    from sqlalchemy import func, select

    from swarmq.config import load_config
    from swarmq.demo import build_demo_assets, default_cache_dir
    from swarmq.engine import create_search, final_report, search_summary, with_seed
    from swarmq.execution import EmbeddedRunner
    from swarmq.settings import Settings
    from swarmq.storage import EvaluationRow

    cache = args.cache or default_cache_dir()
    build_demo_assets(cache)
    text = (cache / "search.toml").read_text()
    rows: dict[str, list[tuple[int, float, float, int, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="swarmq-quality-") as tmp:
        for mode in MODES:
            # Patience above max_iterations: every search makes all its evaluations.
            path = cache / f"quality-{mode}.toml"
            path.write_text(text.replace("patience = 6", f'patience = 13\nmode = "{mode}"', 1))
            base = load_config(path)
            assert base.swarm.mode == mode and base.swarm.patience == 13
            runner = EmbeddedRunner(
                Settings(f"sqlite:///{Path(tmp) / f'{mode}.sqlite'}", Path(tmp) / "art")
            )
            for seed in seeds:
                t0 = time.perf_counter()
                sid = create_search(runner.runtime, with_seed(base, seed))
                runner.drive(sid)
                report = final_report(runner.runtime.db, sid)
                summary = search_summary(runner.runtime.db, sid)
                assert report is not None and summary.status == "completed"
                assert report.global_best.dev is not None and report.global_best.test is not None
                with runner.runtime.db.session() as session:
                    dev_evaluations = int(
                        session.scalar(
                            select(func.count())
                            .select_from(EvaluationRow)
                            .where(
                                EvaluationRow.search_id == sid,
                                EvaluationRow.split == "dev",
                                EvaluationRow.status == "done",
                            )
                        )
                        or 0
                    )
                rows[mode].append(
                    (
                        seed,
                        report.global_best.dev,
                        report.global_best.test,
                        dev_evaluations,
                        time.perf_counter() - t0,
                    )
                )
                print(
                    f"{mode} seed {seed}: dev {report.global_best.dev:.4f} "
                    f"test {report.global_best.test:.4f} ({dev_evaluations} dev evaluations, "
                    f"{rows[mode][-1][4]:.0f} s)",
                    flush=True,
                )
    print()
    print("| mode | dev evaluations | dev: mean ± sd | test: mean ± sd | per seed (dev / test) |")
    print("| --- | --- | --- | --- | --- |")
    for mode in MODES:
        r = rows[mode]
        dev, test = [x[1] for x in r], [x[2] for x in r]
        print(
            f"| {mode} | {sorted({x[3] for x in r})} | {statistics.mean(dev):.4f} ± "
            f"{_sd(dev):.4f} | {statistics.mean(test):.4f} ± {_sd(test):.4f} | "
            + ", ".join(f"{x[0]}: {x[1]:.2f} / {x[2]:.2f}" for x in r)
            + " |"
        )


if __name__ == "__main__":
    main()
