"""Sending work through Celery, and asking the broker which evaluation messages it holds."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery

from swarmq.engine import EvaluationKey
from swarmq.errors import SwarmqError
from swarmq.execution._app import COORDINATOR_QUEUE, EVALUATE_QUEUE
from swarmq.storage import redact_url

__all__ = ["CeleryDispatcher", "CountingBrokerView", "RedisBrokerView", "broker_view"]

log = logging.getLogger(__name__)


class CeleryDispatcher:
    """A :class:`swarmq.engine.Dispatcher` that publishes to the broker.

    The messages carry keyword arguments only, and a short ``kwargsrepr`` so that Flower and
    the worker logs read ``search=… iteration=… particle=… split=…``.
    """

    def __init__(self, app: Celery, identity: Callable[[], str] | None = None) -> None:
        self.app = app
        #: The identity of the database the work is recorded in (read on the first send):
        #: every message carries it, so a worker on another database refuses it (see tasks).
        self.identity = identity

    def _send(self, name: str, queue: str, kwargs: dict[str, Any], shown: str) -> None:
        if self.identity is not None:
            kwargs = kwargs | {"database": self.identity()}
        try:
            self.app.send_task(name, kwargs=kwargs, queue=queue, argsrepr="()", kwargsrepr=shown)
        except Exception as err:  # kombu raises OperationalError and socket errors
            raise SwarmqError(
                f"cannot send {name} ({shown}) to the broker "
                f"{redact_url(str(self.app.conf.broker_url))}: {err}; the database keeps the "
                "work: once the broker is back the reconciler sends it (or run swarmq resume)"
            ) from None

    def send_evaluation(self, search_id: str, iteration: int, particle: int, split: str) -> None:
        self._send(
            "swarmq.evaluate",
            EVALUATE_QUEUE,
            {"search_id": search_id, "iteration": iteration, "particle": particle, "split": split},
            f"search={search_id} iteration={iteration} particle={particle} split={split}",
        )

    def send_coordination(self, search_id: str, iteration: int) -> None:
        self._send(
            "swarmq.coordinate",
            COORDINATOR_QUEUE,
            {"search_id": search_id, "iteration": iteration},
            f"search={search_id} iteration={iteration}",
        )


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _evaluation_of(payload: dict[str, Any]) -> EvaluationKey | None:
    """The evaluation a kombu message (as Redis stores it) is for, or None."""
    headers = payload.get("headers") or {}
    if headers.get("task") != "swarmq.evaluate":
        return None
    body: Any = payload.get("body")
    if (payload.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    names = ("search_id", "iteration", "particle", "split")
    values = dict(zip(names, args, strict=False)) | dict(kwargs)
    return (
        str(values["search_id"]),
        int(values["iteration"]),
        int(values["particle"]),
        str(values.get("split", "dev")),
    )


class RedisBrokerView:
    """Reads the evaluation queue and the unacknowledged set of a Redis broker.

    kombu keeps a queue as a Redis list named after it (priority levels in lists with a
    suffix), and every delivered, unacknowledged message in the ``unacked`` hash until it is
    acknowledged: together they are every message the broker holds.

    ``unacked_grace``: an unacknowledged message delivered longer ago than this many seconds
    is not counted. The reconciler asks about pending evaluations only, and a live worker
    claims the evaluation of a message within moments of taking it; one still pending after
    that was taken by a worker that died (a lost machine): Redis would hand its message out
    again only after the visibility timeout, an hour or more, so the evaluation is sent again
    now (a duplicate, if the holder was only slow, is a cheap no-op).
    """

    # kombu's separator and default priority steps for the priority lists of a queue.
    _PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

    def __init__(
        self, url: str, queue: str = EVALUATE_QUEUE, *, unacked_grace: float | None = None
    ) -> None:
        import redis

        self.url, self.queue, self.unacked_grace = url, queue, unacked_grace
        self.client = redis.Redis.from_url(url, socket_timeout=30)

    def _payloads(self) -> Iterable[Any]:
        for suffix in self._PRIORITY_SUFFIXES:
            start, step = 0, 1000
            while True:  # in slices: a long queue must not be one huge reply
                chunk: list[bytes] = self.client.lrange(  # type: ignore[assignment]
                    self.queue + suffix, start, start + step - 1
                )
                for raw in chunk:
                    yield _loads(raw)
                if len(chunk) < step:
                    break
                start += step
        fresh: set[bytes] | None = None
        if self.unacked_grace is not None:
            # kombu scores each delivery tag with the time of its delivery.
            since = time.time() - self.unacked_grace
            fresh = set(self.client.zrangebyscore("unacked_index", since, "+inf"))  # type: ignore[arg-type]
        for tag, raw in self.client.hscan_iter("unacked", count=1000):
            if fresh is not None and tag not in fresh:
                continue
            entry = _loads(raw)  # [message, exchange, routing key]
            if isinstance(entry, list) and entry:
                yield entry[0]

    def queued_evaluations(self) -> set[EvaluationKey] | None:
        found: set[EvaluationKey] = set()
        try:
            for payload in self._payloads():
                try:
                    key = _evaluation_of(payload)
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # not a message of ours
                if key is not None:
                    found.add(key)
        except Exception as err:  # the broker is down: say nothing rather than guess
            log.warning("cannot read the broker %s: %s", redact_url(self.url), err)
            return None
        return found

    def evaluation_queue_empty(self) -> bool | None:
        found = self.queued_evaluations()
        return None if found is None else not found


class CountingBrokerView:
    """Any other broker (RabbitMQ): only the number of waiting evaluation messages is known."""

    def __init__(self, app: Celery, queue: str = EVALUATE_QUEUE) -> None:
        self.app, self.queue = app, queue

    def queued_evaluations(self) -> set[EvaluationKey] | None:
        return None

    def evaluation_queue_empty(self) -> bool | None:
        try:
            with self.app.connection_for_read() as conn:
                _name, count, _consumers = conn.default_channel.queue_declare(
                    queue=self.queue, passive=True
                )
        except Exception as err:
            # A queue that was never declared holds nothing; a broker that is down says nothing.
            if "NOT_FOUND" in str(err) or "404" in str(err):
                return True
            log.warning("cannot read the broker's queue %s: %s", self.queue, err)
            return None
        # Delivered messages are not counted, but with a prefetch of one each of them is a
        # running evaluation, which the reconciler leaves alone anyway.
        return int(count) == 0


def broker_view(
    app: Celery, *, unacked_grace: float | None = None
) -> RedisBrokerView | CountingBrokerView:
    """The most precise view the configured broker allows (see :class:`RedisBrokerView` for
    ``unacked_grace``)."""
    url = str(app.conf.broker_url or "")
    if url.startswith(("redis://", "rediss://")):
        return RedisBrokerView(url, unacked_grace=unacked_grace)
    return CountingBrokerView(app)
