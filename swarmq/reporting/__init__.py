"""Seeing and checking a search after the fact: reports, audit, history, seed summaries.

Everything here only reads the durable record (the database and the artifact store); the
operations that write (baselines, merged exports) are in :mod:`swarmq.engine`. matplotlib is
imported only when a report is drawn.

* :func:`write_report` - an HTML page with PNG figures (``swarmq report``), whose final table
  (:func:`result_rows`) carries paired bootstrap intervals (:func:`paired_bootstrap`), the
  baselines included;
* :func:`seed_summary` - mean and spread over the searches of a seed group;
* :func:`audit_search` - recompute every position and velocity, name the first mismatch
  (``swarmq audit``), and check the recorded baselines;
* :func:`history_rows` / :func:`history_document` - the full history (``swarmq history``).
"""

from swarmq.reporting._audit import AuditResult, Mismatch, audit_search
from swarmq.reporting._history import (
    HISTORY_FIELDS,
    history_document,
    history_rows,
    write_csv,
    write_json,
)
from swarmq.reporting._intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Interval,
    paired_bootstrap,
)
from swarmq.reporting._record import SearchRecord, composition, load_record
from swarmq.reporting._report import ReportResult, render_html, write_report
from swarmq.reporting._seeds import Spread, SpreadRow, seed_summary
from swarmq.reporting._table import ResultRow, result_rows

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "HISTORY_FIELDS",
    "AuditResult",
    "Interval",
    "Mismatch",
    "ReportResult",
    "ResultRow",
    "SearchRecord",
    "Spread",
    "SpreadRow",
    "audit_search",
    "composition",
    "history_document",
    "history_rows",
    "load_record",
    "paired_bootstrap",
    "render_html",
    "result_rows",
    "seed_summary",
    "write_csv",
    "write_json",
    "write_report",
]
