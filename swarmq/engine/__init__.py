"""The search engine: create, evaluate, coordinate and recover searches over the database.

Every operation here is a function of ids and a :class:`Runtime`; Celery tasks are thin
wrappers around them (see :mod:`swarmq.execution`). The operations that write besides a search
(its baselines, a merged export) live here too; the record readers (:func:`search_in_txn`,
:func:`config_of`, :func:`params_of`, :func:`layout_of`) are public for
:mod:`swarmq.reporting`, which only reads.
"""

from swarmq.engine._baselines import (
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
from swarmq.engine._common import (
    adapter_config_of,
    config_of,
    layout_of,
    params_of,
    search_in_txn,
)
from swarmq.engine._coordinate import CoordinationResult, coordinate_iteration, fail_coordination
from swarmq.engine._create import create_search
from swarmq.engine._delete import delete_search
from swarmq.engine._evaluate import Outcome, one_line, run_evaluation
from swarmq.engine._export import (
    MERGED_MARKER,
    export_merged,
    personal_best_position,
    search_base_model,
)
from swarmq.engine._groups import GroupMember, group_members, seed_group_id, with_seed
from swarmq.engine._lease import SearchBusyError, driving
from swarmq.engine._leases import EvaluationPolicy, claim_coordination, worker_name
from swarmq.engine._queries import (
    FinalReport,
    ScoredPosition,
    SearchSummary,
    best_history,
    final_report,
    global_best_position,
    list_searches,
    search_summary,
    utility_histories,
)
from swarmq.engine._reconcile import (
    Activity,
    BrokerView,
    EvaluationKey,
    ParticleActivity,
    ReconcileReport,
    busy_workers,
    reconcile,
    search_activity,
)
from swarmq.engine._recover import (
    Work,
    cancel_search,
    mark_dispatched,
    pending_work,
    reopen_search,
    send_work,
)
from swarmq.engine._runtime import (
    Dispatcher,
    Runtime,
    current_runtime,
    install_runtime,
    model_evaluate,
    runtime_from_settings,
    runtime_installed,
)
from swarmq.engine._soups import (
    LORAHUB_BOUND,
    derived_seed,
    lorahub_search,
    mean_position,
    merge_scales,
    weighted_position,
)

__all__ = [
    "BASELINES",
    "DEFAULT_DENSITY",
    "DEFAULT_TOP_K",
    "LORAHUB_BOUND",
    "MERGED_MARKER",
    "MERGES",
    "TIE_BREAK",
    "Activity",
    "BaselineRun",
    "BrokerView",
    "CoordinationResult",
    "Dispatcher",
    "EvaluationKey",
    "EvaluationPolicy",
    "FinalReport",
    "GroupMember",
    "Member",
    "ModelScorer",
    "Outcome",
    "ParticleActivity",
    "ReconcileReport",
    "Runtime",
    "ScoredPosition",
    "Scorer",
    "SearchBusyError",
    "SearchSummary",
    "Work",
    "adapter_config_of",
    "best_history",
    "busy_workers",
    "cancel_search",
    "claim_coordination",
    "compute_baselines",
    "config_of",
    "coordinate_iteration",
    "create_search",
    "current_runtime",
    "delete_search",
    "derived_seed",
    "driving",
    "export_merged",
    "fail_coordination",
    "final_report",
    "global_best_position",
    "group_members",
    "install_runtime",
    "layout_of",
    "list_searches",
    "lorahub_search",
    "majority_vote",
    "mark_dispatched",
    "mean_position",
    "merge_scales",
    "model_evaluate",
    "one_line",
    "params_of",
    "pending_work",
    "personal_best_position",
    "rank_personal_bests",
    "reconcile",
    "reopen_search",
    "run_evaluation",
    "runtime_from_settings",
    "runtime_installed",
    "search_activity",
    "search_base_model",
    "search_in_txn",
    "search_summary",
    "seed_group_id",
    "send_work",
    "utility_histories",
    "weighted_position",
    "with_seed",
    "worker_name",
]
