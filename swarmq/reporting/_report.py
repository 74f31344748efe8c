"""``swarmq report``: one folder with ``index.html``, its PNG figures and ``summary.json``.

The page is a jinja2 template (``templates/report.html.j2``, autoescaped). The folder is
self-contained: the page links only the PNG files next to it (no script, no
stylesheet or font from the network), so it can be zipped, mailed or served as it is. Everything
comes from the database: the recorded configuration, iterations, particle states, evaluations
and baselines; no artifact is read and no model is loaded.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from swarmq import __version__
from swarmq.errors import SwarmqError
from swarmq.reporting._plots import FIGURES, draw_figures
from swarmq.reporting._record import SearchRecord, load_record
from swarmq.reporting._table import ResultRow, result_rows
from swarmq.storage import Database

__all__ = ["ReportResult", "render_html", "write_report"]


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and how long its parts took (seconds)."""

    index: Path
    figures: tuple[Path, ...]
    load_seconds: float
    plot_seconds: float
    total_seconds: float


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _when(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _results(rec: SearchRecord, rows: list[ResultRow]) -> dict[str, Any]:
    intervals = [r.interval for r in rows if r.interval is not None]
    notes = []
    for b in rec.baselines:
        if b.name.startswith("ensemble_") and b.split == "dev":
            listed = ", ".join(
                f"particle {m.get('particle')} (iteration {m.get('iteration')}, dev "
                f"{_fmt(m.get('dev_utility'))})"
                for m in b.metrics.get("members", [])
            )
            notes.append(
                f"{b.name}: members by rank: {listed}. Tie-break: {b.metrics.get('tie_break', '')}."
            )
    for b in rec.baselines:
        if b.split != "test":
            continue
        if b.name == "greedy_soup":
            kept = ", ".join(map(str, b.metrics.get("ingredient_names", [])))
            notes.append(
                "greedy soup: experts added in order of dev utility while dev did not drop; "
                f"kept {kept}."
            )
        elif b.name == "lorahub":
            weights = ", ".join(f"{w:+.3f}" for w in b.metrics.get("weights", []))
            notes.append(f"LoraHub: chosen expert weights (experts by name) [{weights}].")
    return {
        "results": [
            {
                "label": r.label,
                "baseline": r.kind != "search",
                "dev": _fmt(r.dev),
                "test": _fmt(r.test),
                "interval": "" if r.interval is None else r.interval.describe(),
            }
            for r in rows
        ],
        "show_intervals": bool(intervals),
        "interval": intervals[0] if intervals else None,
        "multitask": rec.config.objective.utility == "multitask",
        "has_baselines": bool(rec.baselines),
        "notes": notes,
    }


def _particles(rec: SearchRecord) -> dict[str, Any] | None:
    if rec.n_iterations == 0:
        return None
    last = rec.n_iterations - 1
    rows = []
    for p in rec.particles:
        i = p.index
        rows.append(
            [
                str(i),
                p.describe(),
                _fmt(float(rec.utility[0, i])),
                _fmt(float(rec.utility[last, i])),
                _fmt(
                    float(np.nanmax(rec.best_utility[:, i]))
                    if not np.all(np.isnan(rec.best_utility[:, i]))
                    else None
                ),
                str(int(rec.best_iteration[:, i].max())),
                str(int(rec.restarted[:, i].sum())),
                str(int((rec.evaluated[:, i] == 0).sum())),
            ]
        )
    headers = [
        "particle",
        "origin",
        "utility at 0",
        f"utility at {last}",
        "personal best",
        "reached at",
        "restarts",
        "skipped",
    ]
    return {"headers": headers, "rows": rows, "numeric": {0, 2, 3, 4, 5, 6, 7}}


def _workers(rec: SearchRecord) -> dict[str, Any] | None:
    by_worker: dict[str, list[float]] = defaultdict(list)
    for t in rec.timings:
        by_worker[t.worker].append(t.seconds)
    if not by_worker:
        return None
    rows = []
    for worker in sorted(by_worker):
        times = sorted(by_worker[worker])
        p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
        rows.append(
            [
                worker,
                str(len(times)),
                _fmt(statistics.fmean(times), 3),
                _fmt(statistics.median(times), 3),
                _fmt(p95, 3),
                _fmt(sum(times), 1),
            ]
        )
    headers = ["worker", "evaluations", "mean s", "median s", "p95 s", "total s"]
    return {"headers": headers, "rows": rows, "numeric": {1, 2, 3, 4, 5}}


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:.92em}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}dt{color:#666}dd{margin:0}
code,pre{background:#f6f6f6;padding:0 .25em}pre{padding:.6em;overflow-x:auto}
figure{margin:1em 0}figcaption{color:#555;font-size:.92em}
"""


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    # Autoescaped: names, ids, stop reasons and dataset strings from the record are text.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("swarmq.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2")


def render_html(rec: SearchRecord, figures: list[str]) -> str:
    """The report page for ``rec``; ``figures`` are the PNG file names next to it."""
    rows = result_rows(rec)
    evals = len([t for t in rec.timings if t.split == "dev"])
    duration = (
        "–"
        if rec.finished_at is None
        else f"{(rec.finished_at - rec.created_at).total_seconds():.1f} s"
    )
    facts = [
        ("particles", f"{rec.n_particles} ({rec.n_experts} experts)"),
        ("iterations", f"{len(rec.applied)} applied of {rec.params.max_iterations + 1} at most"),
        ("dev evaluations", str(evals)),
        ("utility", rec.config.objective.utility),
        ("seed", str(rec.seed)),
        ("created", _when(rec.created_at)),
        ("finished", _when(rec.finished_at)),
        ("duration", duration),
    ]
    by_name = {name: (title, caption) for name, title, caption in FIGURES}
    return _template().render(
        rec=rec,
        css=_CSS,
        facts=facts,
        figures=[
            {"file": name, "title": by_name[name][0], "caption": by_name[name][1]}
            for name in figures
        ],
        particles=_particles(rec),
        workers=_workers(rec),
        config=json.dumps(json.loads(rec.config_json), indent=2, sort_keys=True),
        version=__version__,
        written=_when(datetime.now()),
        **_results(rec, rows),
    )


def _summary(rec: SearchRecord, rows: list[ResultRow]) -> dict[str, Any]:
    return {
        "search": rec.id,
        "name": rec.name,
        "status": rec.status,
        "stop_reason": rec.stop_reason,
        "particles": rec.n_particles,
        "experts": rec.n_experts,
        "iterations": len(rec.applied),
        "results": [
            {
                "label": r.label,
                "kind": r.kind,
                "key": r.key,
                "dev": r.dev,
                "test": r.test,
                "global_best_minus_row_test": None if r.interval is None else r.interval.as_dict(),
            }
            for r in rows
        ],
        "global_best": [it.best_utility for it in rec.applied],
        "global_worst": [it.worst_utility for it in rec.applied],
        "step_length": [it.step_length for it in rec.iterations],
        "restarts": [int(n) for n in rec.restarted.sum(axis=1)],
    }


_GENERATOR = b'<meta name="generator" content="swarmq report">'


def write_report(
    db: Database, search_id: str, out_dir: Path, *, overwrite: bool = False
) -> ReportResult:
    """Write ``index.html``, the figures and ``summary.json`` into ``out_dir``.

    Files of an earlier swarmq report in the same folder are replaced; nothing else there is
    touched. An ``index.html`` that is not one (a site's own page) is refused unless
    ``overwrite`` (``--overwrite``).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SwarmqError(f"report target {out_dir} is a file; give a folder path")
    existing = out_dir / "index.html"
    if not overwrite and existing.is_file():
        with existing.open("rb") as f:
            ours = _GENERATOR in f.read(4096)
        if not ours:
            raise SwarmqError(
                f"report target {out_dir} already holds an index.html that is not a swarmq "
                "report; choose another folder or pass --overwrite"
            )
    t0 = time.perf_counter()
    rec = load_record(db, search_id)
    t1 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = draw_figures(rec, out_dir)
    t2 = time.perf_counter()
    rows = result_rows(rec)
    index = out_dir / "index.html"
    index.write_text(render_html(rec, [p.name for p in paths]), encoding="utf-8")
    (out_dir / "summary.json").write_text(
        json.dumps(_summary(rec, rows), indent=2) + "\n", encoding="utf-8"
    )
    t3 = time.perf_counter()
    return ReportResult(index, tuple(paths), t1 - t0, t2 - t1, t3 - t0)
