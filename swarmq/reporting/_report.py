"""``swarmq report``: one folder with ``index.html``, its PNG figures and ``summary.json``.

The folder is self-contained: the page links only the PNG files next to it (no script, no
stylesheet or font from the network), so it can be zipped, mailed or served as it is. Everything
comes from the database: the recorded configuration, iterations, particle states, evaluations
and baselines; no artifact is read and no model is loaded.
"""

from __future__ import annotations

import html
import json
import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _results(rec: SearchRecord, rows: list[ResultRow]) -> str:
    if not rows:
        return "<p>No iteration has been evaluated yet.</p>"
    intervals = [r.interval for r in rows if r.interval is not None]
    headers = ["", "dev", "test"]
    if intervals:
        headers.append("global best − row, test [95 % CI]")
    out = _table(
        headers,
        [
            [
                _esc(r.label) if r.kind == "search" else f"<i>baseline:</i> {_esc(r.label)}",
                _fmt(r.dev),
                _fmt(r.test),
            ]
            + ([] if not intervals else ["" if r.interval is None else _esc(r.interval.describe())])
            for r in rows
        ],
        numeric={1, 2, 3},
    )
    notes = []
    if intervals:
        first = intervals[0]
        notes.append(
            f"Intervals: paired bootstrap over the {first.n} test items (the same resampled "
            f"items for both models), {first.resamples:,} resamples, seed {first.seed}, 2.5 and "
            "97.5 percentiles of the resampled difference of mean item scores, from the "
            "per-item scores recorded with every evaluation. An interval above 0 says the "
            "global best is better on test."
            + (
                " For multitask objectives the item scores are each item's score in its own "
                "task, so the difference is of their mean, not of the harmonic mean."
                if rec.config.objective.utility == "multitask"
                else ""
            )
        )
    if not rec.baselines:
        notes.append(
            "Baselines (every expert on test, soups, peft merges, LoraHub, top-k ensemble) are "
            f"not computed yet: run <code>swarmq baselines {_esc(rec.id)}</code>, then the "
            "report again."
        )
    if rec.status != "completed":
        notes.append(
            f"The search is {_esc(rec.status)}: the test split is evaluated once it completes."
        )
    ensembles = [b for b in rec.baselines if b.name.startswith("ensemble_") and b.split == "dev"]
    for b in ensembles:
        members = b.metrics.get("members", [])
        listed = ", ".join(
            f"particle {m.get('particle')} (iteration {m.get('iteration')}, dev "
            f"{_fmt(m.get('dev_utility'))})"
            for m in members
        )
        notes.append(
            f"{_esc(b.name)}: members by rank: {_esc(listed)}. Tie-break: "
            f"{_esc(b.metrics.get('tie_break', ''))}."
        )
    for b in rec.baselines:
        if b.split != "test":
            continue
        if b.name == "greedy_soup":
            notes.append(
                "greedy soup: experts added in order of dev utility while dev did not drop; "
                f"kept {_esc(', '.join(map(str, b.metrics.get('ingredient_names', []))))}."
            )
        elif b.name == "lorahub":
            weights = ", ".join(f"{w:+.3f}" for w in b.metrics.get("weights", []))
            notes.append(f"LoraHub: chosen expert weights (experts by name) [{_esc(weights)}].")
    return out + "".join(f'<p class="note">{n}</p>' for n in notes)


def _particles(rec: SearchRecord) -> str:
    if rec.n_iterations == 0:
        return ""
    last = rec.n_iterations - 1
    rows = []
    for p in rec.particles:
        i = p.index
        rows.append(
            [
                str(i),
                _esc(p.describe()),
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
    return _table(
        [
            "particle",
            "origin",
            "utility at 0",
            f"utility at {last}",
            "personal best",
            "reached at",
            "restarts",
            "skipped",
        ],
        rows,
        numeric={0, 2, 3, 4, 5, 6, 7},
    )


def _workers(rec: SearchRecord) -> str:
    by_worker: dict[str, list[float]] = defaultdict(list)
    for t in rec.timings:
        by_worker[t.worker].append(t.seconds)
    if not by_worker:
        return "<p>No timed evaluation.</p>"
    rows = []
    for worker in sorted(by_worker):
        times = sorted(by_worker[worker])
        p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
        rows.append(
            [
                _esc(worker),
                str(len(times)),
                _fmt(statistics.fmean(times), 3),
                _fmt(statistics.median(times), 3),
                _fmt(p95, 3),
                _fmt(sum(times), 1),
            ]
        )
    return _table(
        ["worker", "evaluations", "mean s", "median s", "p95 s", "total s"],
        rows,
        numeric={1, 2, 3, 4, 5},
    )


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


def render_html(rec: SearchRecord, figures: list[str]) -> str:
    """The report page for ``rec``; ``figures`` are the PNG file names next to it."""
    rows = result_rows(rec)
    applied = rec.applied
    evals = len([t for t in rec.timings if t.split == "dev"])
    duration = (
        "–"
        if rec.finished_at is None
        else f"{(rec.finished_at - rec.created_at).total_seconds():.1f} s"
    )
    facts = [
        ("search", f"<code>{_esc(rec.id)}</code>"),
        ("status", _esc(rec.status) + (f": {_esc(rec.stop_reason)}" if rec.stop_reason else "")),
        ("particles", f"{rec.n_particles} ({rec.n_experts} experts)"),
        ("iterations", f"{len(applied)} applied of {rec.params.max_iterations + 1} at most"),
        ("dev evaluations", str(evals)),
        ("utility", _esc(rec.config.objective.utility)),
        ("seed", str(rec.seed)),
        ("created", _when(rec.created_at)),
        ("finished", _when(rec.finished_at)),
        ("duration", duration),
    ]
    by_name = {name: (title, caption) for name, title, caption in FIGURES}
    figure_html = "".join(
        f"<figure><h3>{_esc(by_name[name][0])}</h3>"
        f'<img src="{_esc(name)}" alt="{_esc(by_name[name][0])}">'
        f"<figcaption>{_esc(by_name[name][1])}</figcaption></figure>"
        for name in figures
    )
    config = json.dumps(json.loads(rec.config_json), indent=2, sort_keys=True)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="swarmq report">
<title>swarmq report: {_esc(rec.name)} ({_esc(rec.id)})</title>
<style>{_CSS}</style></head><body>
<h1>{_esc(rec.name)}</h1>
<dl>{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)}</dl>
<h2>Result</h2>
{_results(rec, rows)}
<h2>Search</h2>
{figure_html}
<h2>Particles</h2>
{_particles(rec)}
<h2>Workers</h2>
{_workers(rec)}
<h2>Configuration</h2>
<details><summary>recorded configuration</summary><pre>{_esc(config)}</pre></details>
<p class="note">swarmq {_esc(__version__)} · report written {_when(datetime.now())} from the
database record · <code>swarmq audit {_esc(rec.id)}</code> recomputes every position.</p>
</body></html>
"""


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
