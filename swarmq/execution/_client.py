"""The client side of the distributed mode: record in the database, then send to the broker."""

from __future__ import annotations

from swarmq.config import SearchConfig
from swarmq.engine import (
    ReconcileReport,
    Runtime,
    cancel_search,
    create_search,
    pending_work,
    reconcile,
    reopen_search,
    runtime_from_settings,
    send_work,
)
from swarmq.errors import ConfigError, SwarmqError
from swarmq.execution._app import configure_app
from swarmq.execution._dispatch import CeleryDispatcher, CountingBrokerView, RedisBrokerView
from swarmq.execution._dispatch import broker_view as _broker_view
from swarmq.settings import Settings

__all__ = ["DistributedClient", "require_broker"]


def require_broker(settings: Settings) -> str:
    """The broker URL, or a clear error saying how to set one."""
    if not settings.broker_url:
        raise ConfigError(
            "no broker is configured: set SWARMQ_BROKER_URL (or broker_url in the settings "
            "file, or --broker), e.g. redis://host:6379/0; `swarmq run` needs none"
        )
    return settings.broker_url


class DistributedClient:
    """Submit, resume, cancel and reconcile searches run by ``swarmq worker`` processes."""

    def __init__(self, settings: Settings) -> None:
        require_broker(settings)
        self.settings = settings
        self.app = configure_app(settings)
        # One rule for everything that goes through a broker, the workers included: the
        # schema is made by `swarmq db upgrade` (or the compose file's migrate service), never
        # by whichever process comes first, which would race the others on an empty database.
        dispatcher = CeleryDispatcher(self.app)
        self.runtime: Runtime = runtime_from_settings(settings, dispatcher, create=False)
        dispatcher.identity = self.runtime.db.identity

    def broker(self) -> RedisBrokerView | CountingBrokerView:
        return _broker_view(self.app, unacked_grace=self.settings.dispatch_grace)

    def submit(self, config: SearchConfig, *, check_objective: bool = True) -> str:
        """Record a new search and send its first evaluations; returns its id at once."""
        search_id = create_search(self.runtime, config, check_objective=check_objective)
        try:
            send_work(self.runtime, pending_work(self.runtime, search_id))
        except SwarmqError as err:
            raise SwarmqError(
                f"search {search_id} is recorded but its work was not sent: {err}"
            ) from None
        return search_id

    def resume(self, search_id: str) -> ReconcileReport:
        """Reopen a failed or cancelled search and send what it needs that the broker lacks.

        Running evaluations are left to their workers; one whose heartbeat stopped is sent
        again (attempts kept).
        """
        reopen_search(self.runtime, search_id, reset_running=False)
        return reconcile(
            self.runtime,
            broker=self.broker(),
            heartbeat_timeout=self.settings.heartbeat_timeout,
            dispatch_grace=0.0,
            search_id=search_id,
            lost_if_unknown=True,
        )

    def reconcile(self, search_id: str | None = None) -> ReconcileReport:
        """One reconciler pass, as the coordinator runs it periodically."""
        return reconcile(
            self.runtime,
            broker=self.broker(),
            heartbeat_timeout=self.settings.heartbeat_timeout,
            dispatch_grace=self.settings.dispatch_grace,
            search_id=search_id,
        )

    def worker_databases(self, timeout: float = 1.0) -> dict[str, str | None]:
        """Each live worker (node name) and the identity of its database, as they answer."""
        try:
            replies = self.app.control.broadcast("swarmq_database", reply=True, timeout=timeout)
        except Exception:  # the broker is down: no worker can be seen
            return {}
        found: dict[str, str | None] = {}
        for reply in replies or []:
            for node, answer in reply.items():
                found[node] = answer.get("database") if isinstance(answer, dict) else None
        return found

    def cancel(self, search_id: str) -> str:
        """Cancel a search; returns its status before."""
        return cancel_search(self.runtime.db, search_id)
