"""The search engine: create, evaluate, coordinate and recover searches over the database.

Every operation here is a function of ids and a :class:`Runtime`; Celery tasks are thin
wrappers around them (see :mod:`swarmq.execution`).
"""

from swarmq.engine._coordinate import CoordinationResult, coordinate_iteration, fail_coordination
from swarmq.engine._create import create_search
from swarmq.engine._delete import delete_search
from swarmq.engine._evaluate import (
    EvaluationPolicy,
    Outcome,
    claim_coordination,
    one_line,
    run_evaluation,
    worker_name,
)
from swarmq.engine._groups import GroupMember, group_members, seed_group_id, with_seed
from swarmq.engine._lease import SearchBusyError, driving
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
    runtime_from_settings,
    runtime_installed,
)

__all__ = [
    "Activity",
    "BrokerView",
    "CoordinationResult",
    "Dispatcher",
    "EvaluationKey",
    "EvaluationPolicy",
    "FinalReport",
    "GroupMember",
    "Outcome",
    "ParticleActivity",
    "ReconcileReport",
    "Runtime",
    "ScoredPosition",
    "SearchBusyError",
    "SearchSummary",
    "Work",
    "best_history",
    "busy_workers",
    "cancel_search",
    "claim_coordination",
    "coordinate_iteration",
    "create_search",
    "current_runtime",
    "delete_search",
    "driving",
    "fail_coordination",
    "final_report",
    "global_best_position",
    "group_members",
    "install_runtime",
    "list_searches",
    "mark_dispatched",
    "one_line",
    "pending_work",
    "reconcile",
    "reopen_search",
    "run_evaluation",
    "runtime_from_settings",
    "runtime_installed",
    "search_activity",
    "search_summary",
    "seed_group_id",
    "send_work",
    "utility_histories",
    "with_seed",
    "worker_name",
]
