"""The report's figures, drawn with matplotlib's Agg backend into PNG files.

Every figure must stay readable at 50 particles by 1,000 iterations: per-particle series are
drawn as heatmaps (one row per particle) rather than 50 overlapping lines, and events are
drawn as small markers. matplotlib is imported only here, and only when a report is written.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swarmq.reporting._record import SearchRecord, composition

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "draw_figures"]

#: (file name, title, caption) of every figure, in report order.
FIGURES: tuple[tuple[str, str, str], ...] = (
    (
        "utilities.png",
        "Utility of every particle per iteration",
        "One row per particle, one column per iteration (dev utility); grey: not yet "
        "evaluated. A skipped evaluation (dropout) shows the carried-over value. The lowest "
        "2% of utilities share the bottom colour.",
    ),
    (
        "global.png",
        "Global best and global worst",
        "All-time records after each iteration, with the swarm's current maximum, median "
        "and minimum.",
    ),
    (
        "step_length.png",
        "Step length",
        "λ_t, the step length of the update that produced iteration t.",
    ),
    (
        "restarts.png",
        "Restarts",
        "Each marker is a particle reset to its personal best (x = p, v = 0) before the "
        "update that produced that iteration; below, restarts per iteration.",
    ),
    (
        "lineage.png",
        "Lineage",
        "Each particle's starting position as a combination of the experts (crossover "
        "weights; outside [0, 1] is extrapolation).",
    ),
    (
        "workers.png",
        "Evaluation time per worker",
        "Wall time of every finished evaluation (dev and test), per worker.",
    ),
)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    # A bare Figure with the Agg canvas: no pyplot, so no global state and no GUI backend.
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png")


def _particle_height(n: int) -> float:
    return float(min(12.0, max(3.0, 1.5 + 0.16 * n)))


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _utilities(rec: SearchRecord, path: Path) -> None:
    fig = _figure(10, _particle_height(rec.n_particles))
    ax = fig.add_subplot()
    if rec.n_iterations == 0 or np.all(np.isnan(rec.utility)):
        _empty(ax, "no evaluation yet")
    else:
        import matplotlib as mpl

        cmap = mpl.colormaps["viridis"].with_extremes(bad="0.85")
        data = np.ma.masked_invalid(rec.utility.T)
        # A few far-off utilities (a particle thrown out of the good region) would spend the
        # whole colour scale; the lowest 2% share the bottom colour instead.
        low, high = float(np.nanpercentile(rec.utility, 2)), float(np.nanmax(rec.utility))
        clipped = low > float(np.nanmin(rec.utility))
        image = ax.imshow(
            data,
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            origin="lower",
            vmin=low if low < high else None,
            vmax=high if low < high else None,
            extent=(-0.5, rec.n_iterations - 0.5, -0.5, rec.n_particles - 0.5),
        )
        fig.colorbar(image, ax=ax, label="utility (dev)", extend="min" if clipped else "neither")
        ax.set_xlabel("iteration")
        ax.set_ylabel("particle")
        if rec.n_particles <= 25:
            ax.set_yticks(range(rec.n_particles))
    _save(fig, path)


def _global(rec: SearchRecord, path: Path) -> None:
    fig = _figure(10, 4)
    ax = fig.add_subplot()
    applied = rec.applied
    if not applied:
        _empty(ax, "no applied iteration yet")
        _save(fig, path)
        return
    x = np.array([it.number for it in applied])
    best = np.array([np.nan if it.best_utility is None else it.best_utility for it in applied])
    worst = np.array([np.nan if it.worst_utility is None else it.worst_utility for it in applied])
    current = rec.utility[x]
    with warnings.catch_warnings():  # an all-NaN row (pending) is drawn as a gap, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        cur_max = np.nanmax(current, axis=1)
        cur_min = np.nanmin(current, axis=1)
        cur_med = np.nanmedian(current, axis=1)
    ax.fill_between(x, cur_min, cur_max, color="tab:blue", alpha=0.15, step="mid", lw=0)
    ax.plot(x, cur_med, color="tab:blue", lw=1, label="swarm median (min–max band)")
    ax.step(x, best, where="post", color="tab:green", lw=2, label="global best")
    ax.step(x, worst, where="post", color="tab:red", lw=2, label="global worst")
    ax.set_xlabel("iteration")
    ax.set_ylabel("utility (dev)")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _step_length(rec: SearchRecord, path: Path) -> None:
    fig = _figure(10, 3)
    ax = fig.add_subplot()
    points = [(it.number, it.step_length) for it in rec.iterations if it.step_length is not None]
    if not points:
        _empty(ax, "no update yet")
    else:
        xs, ys = zip(*points, strict=True)
        ax.step(xs, ys, where="post", color="tab:purple", lw=1.5)
        ax.axhline(rec.params.min_step_length, color="0.5", ls=":", lw=1, label="min_step_length")
        ax.set_xlabel("iteration")
        ax.set_ylabel("λ")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    _save(fig, path)


def _restarts(rec: SearchRecord, path: Path) -> None:
    fig = _figure(10, _particle_height(rec.n_particles) * 0.7 + 2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    its, parts = np.nonzero(rec.restarted)
    if its.size == 0:
        _empty(top, "no particle was restarted")
        bottom.set_axis_off()
        _save(fig, path)
        return
    top.scatter(its, parts, s=6, marker="s", color="tab:orange", lw=0)
    top.set_ylabel("particle")
    top.set_ylim(-0.5, rec.n_particles - 0.5)
    top.grid(alpha=0.3)
    counts = rec.restarted.sum(axis=1)
    # One filled outline, not one bar per iteration: a thousand patches would be slow to draw.
    bottom.stairs(counts, np.arange(counts.size + 1) - 0.5, fill=True, color="tab:orange")
    bottom.set_ylabel("restarts")
    bottom.set_xlabel("iteration")
    bottom.set_xlim(-0.5, max(rec.n_iterations, 1) - 0.5)
    bottom.grid(alpha=0.3)
    _save(fig, path)


def _lineage(rec: SearchRecord, path: Path) -> None:
    weights = composition(rec.particles, rec.n_experts)
    n, k = weights.shape
    fig = _figure(min(10.0, 3.0 + 0.6 * k), _particle_height(n))
    ax = fig.add_subplot()
    if n == 0:
        _empty(ax, "no particles")
        _save(fig, path)
        return
    limit = max(1.0, float(np.abs(weights).max()))
    image = ax.imshow(
        weights, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
    )
    fig.colorbar(image, ax=ax, label="weight of the expert")
    names = [p.expert_name or f"expert {p.index}" for p in rec.particles[:k]]
    ax.set_xticks(range(k), [name[:20] for name in names], rotation=30, ha="right")
    ax.set_ylabel("particle")
    if n <= 25:
        ax.set_yticks(range(n))
    if n * k <= 300:  # small enough to print every weight
        for (i, j), w in np.ndenumerate(weights):
            if w != 0:
                color = "white" if abs(w) > 0.6 * limit else "black"
                ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=7, color=color)
    _save(fig, path)


def _workers(rec: SearchRecord, path: Path) -> None:
    by_worker: dict[str, list[float]] = defaultdict(list)
    for t in rec.timings:
        by_worker[t.worker].append(t.seconds)
    names = sorted(by_worker)
    fig = _figure(10, min(12.0, max(2.5, 1.2 + 0.35 * len(names))))
    ax = fig.add_subplot()
    if not names:
        _empty(ax, "no timed evaluation")
        _save(fig, path)
        return
    ax.boxplot(
        [by_worker[w] for w in names],
        orientation="horizontal",
        tick_labels=[f"{w[:40]} ({len(by_worker[w])})" for w in names],
        showfliers=True,
        flierprops={"markersize": 2},
    )
    ax.set_xlabel("seconds per evaluation")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


_DRAW = {
    "utilities.png": _utilities,
    "global.png": _global,
    "step_length.png": _step_length,
    "restarts.png": _restarts,
    "lineage.png": _lineage,
    "workers.png": _workers,
}


def draw_figures(rec: SearchRecord, out_dir: Path) -> list[Path]:
    """Write every figure of :data:`FIGURES` into ``out_dir``; returns their paths."""
    paths = []
    for name, _title, _caption in FIGURES:
        path = out_dir / name
        _DRAW[name](rec, path)
        paths.append(path)
    return paths
