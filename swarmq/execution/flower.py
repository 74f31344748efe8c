"""Flower, the Celery monitor, with every endpoint behind its basic auth.

Flower checks credentials only on the handlers it marks as authenticated: ``/metrics``,
``/healthcheck``, the static files and the not-found page answer anyone. ``swarmq flower``
runs Flower through :func:`main`, which puts one check in front of every handler before
Flower builds its application, so that no endpoint is served without the credentials.
"""

from __future__ import annotations

import hmac
import sys
from base64 import b64decode
from binascii import Error as Base64Error
from typing import Any

from swarmq.errors import ConfigError

__all__ = ["guard_handlers", "main", "parse_basic_auth"]


def parse_basic_auth(value: str) -> list[str]:
    """The ``user:password`` pairs of a ``--basic-auth`` value (comma-separated).

    Raises :class:`ConfigError` for a pair without ``:`` or with an empty user or password:
    Flower would accept ``admin:`` and then let in anyone who sends an empty password.
    """
    pairs = value.split(",")
    for pair in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user.strip() or not password:
            shown = "(empty)" if not pair else f"{user or '(no user)'}:{'***' if password else ''}"
            raise ConfigError(
                f"--basic-auth (or FLOWER_BASIC_AUTH) pair {shown!r} needs a user and a "
                "password, both non-empty: give user:password (comma-separated for several)"
            )
    return pairs


def _authorized(header: str, credentials: list[str]) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme != "Basic":
        return False
    try:
        given = b64decode(encoded.strip().encode(), validate=True).decode()
    except (Base64Error, UnicodeDecodeError):
        return False
    # Every pair is compared, so the time taken does not tell which one nearly matched.
    matches = [hmac.compare_digest(given.encode(), c.encode()) for c in credentials]
    return any(matches)


def _guarded(handler: type) -> type:
    """A subclass of the tornado handler ``handler`` that answers 401 without the credentials."""

    class Guarded(handler):
        def prepare(self) -> Any:
            credentials = list(self.application.options.basic_auth or [])
            if credentials and not _authorized(
                self.request.headers.get("Authorization", ""), credentials
            ):
                self.set_status(401)
                self.set_header("WWW-Authenticate", 'Basic realm="flower"')
                self.finish("Access denied")
                return None
            return super().prepare()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{handler.__name__}"
    return Guarded


def guard_handlers(handlers: list[Any], settings: dict[str, Any]) -> None:
    """Put the credential check in front of every handler of Flower's URL table, in place,
    and of the static files tornado serves by itself from ``settings["static_path"]``."""
    from tornado.web import StaticFileHandler

    settings["static_handler_class"] = _guarded(
        settings.get("static_handler_class", StaticFileHandler)
    )
    for index, entry in enumerate(handlers):
        if isinstance(entry, tuple):
            handlers[index] = (entry[0], _guarded(entry[1]), *entry[2:])
        else:  # a tornado URLSpec
            entry.handler_class = _guarded(entry.handler_class)


def main() -> None:
    """``python -m swarmq.execution.flower -A APP flower [options]``: Flower, guarded."""
    import flower.urls

    guard_handlers(flower.urls.handlers, flower.urls.settings)
    from flower.__main__ import main as flower_main

    sys.argv[0] = "celery"
    flower_main()


if __name__ == "__main__":
    main()
