"""Seeing and checking a search after the fact: reports, baselines, audit, history, exports.

Everything here reads the durable record (the database and the artifact store) and nothing
else; only :func:`compute_baselines` and :func:`export_merged` load a model. matplotlib is
imported only when a report is drawn.

* :func:`write_report` - an HTML page with PNG figures (``swarmq report``), whose final table
  (:func:`result_rows`) carries paired bootstrap intervals (:func:`paired_bootstrap`);
* :func:`seed_summary` - mean and spread over the searches of a seed group;
* :func:`compute_baselines` - best single expert, uniform and greedy soups, peft's merges
  (task arithmetic, TIES, DARE), a LoraHub search and the top-k ensemble (``swarmq
  baselines``), with :func:`majority_vote` and its documented tie-break;
* :func:`audit_search` - recompute every position and velocity, name the first mismatch
  (``swarmq audit``);
* :func:`history_rows` / :func:`history_document` - the full history (``swarmq history``);
* :func:`personal_best_position`, :func:`export_merged` - more of ``swarmq export``.
"""

from swarmq.reporting._audit import AuditResult, Mismatch, audit_search
from swarmq.reporting._baselines import (
    BASELINES,
    DEFAULT_DENSITY,
    DEFAULT_TOP_K,
    MERGES,
    TIE_BREAK,
    BaselineRun,
    Member,
    ModelScorer,
    Scorer,
    compute_baselines,
    majority_vote,
    rank_personal_bests,
)
from swarmq.reporting._export import (
    MERGED_MARKER,
    export_merged,
    personal_best_position,
    search_base_model,
)
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
    "BASELINES",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "DEFAULT_DENSITY",
    "DEFAULT_TOP_K",
    "HISTORY_FIELDS",
    "MERGED_MARKER",
    "MERGES",
    "TIE_BREAK",
    "AuditResult",
    "BaselineRun",
    "Interval",
    "Member",
    "Mismatch",
    "ModelScorer",
    "ReportResult",
    "ResultRow",
    "Scorer",
    "SearchRecord",
    "Spread",
    "SpreadRow",
    "audit_search",
    "composition",
    "compute_baselines",
    "export_merged",
    "history_document",
    "history_rows",
    "load_record",
    "majority_vote",
    "paired_bootstrap",
    "personal_best_position",
    "rank_personal_bests",
    "render_html",
    "result_rows",
    "search_base_model",
    "seed_summary",
    "write_csv",
    "write_json",
    "write_report",
]
