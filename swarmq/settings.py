"""Where swarmq keeps its record, which broker it uses, and the worker reliability policy.

Every setting is resolved from, highest precedence first:

1. a command-line option (``--db``, ``--artifacts``, ``--broker``, ``--settings``);
2. the environment: ``SWARMQ_`` + the setting's name in capitals (``SWARMQ_DATABASE_URL``,
   ``SWARMQ_BROKER_URL``, ``SWARMQ_MAX_ATTEMPTS``, ...);
3. the settings file, a flat TOML table of the same names, named by ``--settings`` or
   ``SWARMQ_SETTINGS``;
4. the defaults: the embedded mode, with a SQLite file and an artifact folder under ``./.swarmq``
   and no broker.

A broker URL switches the commands that dispatch work (``submit``, ``resume``, ``reconcile``,
``worker``) to the distributed mode; without one everything runs in this process.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from swarmq.errors import ConfigError

__all__ = ["DEFAULT_HOME", "SETTING_NAMES", "Settings", "load_settings"]

DEFAULT_HOME = Path(".swarmq")
ENV_PREFIX = "SWARMQ_"
SETTINGS_FILE_ENV = "SWARMQ_SETTINGS"


@dataclass(frozen=True)
class Settings:
    """Resolved settings: storage, broker, and the reliability policy of the workers.

    Times are in seconds. ``sources`` says where each value came from (option, environment,
    file or default), for ``swarmq settings``; it holds no values, so no credentials.
    """

    database_url: str
    # The artifact store: a folder that every worker and the coordinator mount at the same
    # path (NFS, a shared volume). Other stores implement swarmq.storage.ArtifactStore.
    artifacts: Path
    # None: the embedded mode (no servers). redis://... or amqp://... (RabbitMQ).
    broker_url: str | None = None
    # An evaluation is given up (and its search failed, with the reason recorded) after this
    # many claims: a task that kills its worker every time must not be redelivered forever.
    max_attempts: int = 3
    # The soft limit raises in the task, which records the error and retries within
    # max_attempts; the hard limit kills a task that ignores the soft one.
    soft_time_limit: float = 3600.0
    time_limit: float = 3900.0
    # Redis re-delivers a message not acknowledged within this time. With late acknowledgement
    # a message stays unacknowledged while its task runs, so this must exceed the hard time
    # limit or a live evaluation would be delivered twice. None: time_limit + 600.
    visibility_timeout: float | None = None
    # A running evaluation writes heartbeat_at this often, from a thread of its own (so a slow
    # evaluation beats as often as a fast one); one silent for heartbeat_timeout is taken as
    # dead (its worker or machine is gone) and sent again. Both are stamped and judged by the
    # database's clock. The timeout is five beats: a live worker would have to fail four in a
    # row to be declared dead, and a dead one's evaluation runs again within
    # heartbeat_timeout + reconcile_interval (about 7 s) of its last beat.
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    # How often the coordinator's reconciler looks for lost work, and how old a dispatch must be
    # before a missing message counts as lost (a message is sent just after its row commits,
    # and a live worker claims the evaluation of a message within moments of taking it).
    reconcile_interval: float = 2.0
    dispatch_grace: float = 5.0
    # RabbitMQ only: the server's delivery acknowledgement timeout (its consumer_timeout, in
    # seconds; 1800 unless raised in rabbitmq.conf or by a policy). RabbitMQ closes the channel
    # of a task that runs longer and delivers its message again, so time_limit must stay below
    # it: swarmq warns otherwise. Set this to what the server has once it is raised.
    consumer_timeout: float = 1800.0
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def distributed(self) -> bool:
        """Whether a broker is configured (the distributed mode)."""
        return bool(self.broker_url)

    @property
    def effective_visibility_timeout(self) -> float:
        """The visibility timeout to give the broker: the setting, or ``time_limit + 600``."""
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return self.time_limit + 600.0

    def warnings(self) -> list[str]:
        """Settings that are accepted but will misbehave on this broker (``swarmq worker`` and
        ``swarmq settings`` print them)."""
        found: list[str] = []
        scheme = (self.broker_url or "").split(":", 1)[0].lower()
        if scheme.startswith(("amqp", "pyamqp")) and self.time_limit > self.consumer_timeout:
            found.append(
                f"time_limit = {self.time_limit:g} s is above RabbitMQ's consumer_timeout "
                f"({self.consumer_timeout:g} s, its default unless consumer_timeout is set): "
                "RabbitMQ would close the channel of an evaluation running that long and deliver "
                f"it again; raise the server's consumer_timeout above {self.time_limit * 1000:.0f}"
                " ms (docs/distributed.md, RabbitMQ) and set consumer_timeout to it, or lower "
                "time_limit"
            )
        return found

    def to_env(self) -> dict[str, str]:
        """The settings as ``SWARMQ_*`` environment variables, for child processes."""
        env: dict[str, str] = {}
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            if value is not None:
                env[ENV_PREFIX + f.name.upper()] = str(value)
        return env


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings) if f.name != "sources")
_TYPES: dict[str, type] = {
    "database_url": str,
    "artifacts": Path,
    "broker_url": str,
    "max_attempts": int,
    "soft_time_limit": float,
    "time_limit": float,
    "visibility_timeout": float,
    "heartbeat_interval": float,
    "heartbeat_timeout": float,
    "reconcile_interval": float,
    "dispatch_grace": float,
    "consumer_timeout": float,
}


def _validate(s: Settings) -> None:
    def where(name: str) -> str:
        return f"{name} (from {s.sources.get(name, 'the caller')})"

    if s.max_attempts < 1:
        raise ConfigError(f"{where('max_attempts')} = {s.max_attempts}: must be at least 1")
    for name in (
        "soft_time_limit",
        "time_limit",
        "heartbeat_interval",
        "heartbeat_timeout",
        "reconcile_interval",
        "consumer_timeout",
    ):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{where(name)} = {getattr(s, name)}: must be above 0")
    if s.dispatch_grace < 0:
        raise ConfigError(f"{where('dispatch_grace')} = {s.dispatch_grace}: must be 0 or more")
    if s.soft_time_limit >= s.time_limit:
        raise ConfigError(
            f"{where('soft_time_limit')} = {s.soft_time_limit} must be below "
            f"{where('time_limit')} = {s.time_limit}: the soft limit lets the task record its "
            "error before the hard limit kills it"
        )
    if s.visibility_timeout is not None and s.visibility_timeout <= s.time_limit:
        raise ConfigError(
            f"{where('visibility_timeout')} = {s.visibility_timeout} must be above "
            f"{where('time_limit')} = {s.time_limit}: otherwise the broker delivers a running "
            "evaluation a second time"
        )
    if s.heartbeat_timeout < 2 * s.heartbeat_interval:
        raise ConfigError(
            f"{where('heartbeat_timeout')} = {s.heartbeat_timeout} must be at least twice "
            f"{where('heartbeat_interval')} = {s.heartbeat_interval}: one late heartbeat must "
            "not make a live evaluation look dead"
        )


def _convert(name: str, raw: Any, source: str) -> Any:
    kind = _TYPES[name]
    if kind is Path:
        if not isinstance(raw, str | Path) or not str(raw):
            raise ConfigError(f"{name} from {source} must be a folder path, got {raw!r}")
        return Path(raw).expanduser().resolve()
    if kind is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{name} from {source} must be a string, got {raw!r}")
        return raw
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = kind(raw)
        if kind is int and isinstance(raw, float | str) and float(raw) != value:
            raise ValueError
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number of seconds"
        raise ConfigError(f"{name} from {source} must be {what}, got {raw!r}") from None
    return value


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"settings file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"settings file {path}: not valid TOML: {err}") from None
    unknown = sorted(set(data) - set(SETTING_NAMES))
    if unknown:
        raise ConfigError(
            f"settings file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(SETTING_NAMES)}"
        )
    return data


def load_settings(
    database_url: str | None = None,
    artifacts: str | Path | None = None,
    *,
    broker_url: str | None = None,
    settings_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> Settings:
    """Resolve the settings: explicit values, then the environment, the file, the defaults.

    ``options`` are further explicit values by setting name (``max_attempts=5``); ``None``
    means "not given". Raises :class:`ConfigError` naming a bad value and where it came from.
    """
    env = os.environ if environ is None else environ
    explicit: dict[str, Any] = {
        "database_url": database_url,
        "artifacts": artifacts,
        "broker_url": broker_url,
    } | options
    unknown = sorted(set(explicit) - set(SETTING_NAMES))
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
    file_name = settings_file or env.get(SETTINGS_FILE_ENV)
    file_values = _read_file(Path(file_name).expanduser()) if file_name else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in SETTING_NAMES:
        env_name = ENV_PREFIX + name.upper()
        if explicit.get(name) not in (None, ""):
            raw, source = explicit[name], "option"
        elif env.get(env_name):
            raw, source = env[env_name], f"environment {env_name}"
        elif name in file_values:
            raw, source = file_values[name], f"settings file {file_name}"
        else:
            continue
        values[name] = _convert(name, raw, source)
        sources[name] = source

    if "database_url" not in values:
        values["database_url"] = f"sqlite:///{(DEFAULT_HOME / 'swarmq.db').resolve()}"
        sources["database_url"] = "default"
    if "artifacts" not in values:
        values["artifacts"] = (DEFAULT_HOME / "artifacts").resolve()
        sources["artifacts"] = "default"
    for name in SETTING_NAMES:
        sources.setdefault(name, "default")
    return Settings(**values, sources=sources)


def with_overrides(settings: Settings, **values: Any) -> Settings:
    """A copy of ``settings`` with some values replaced (validated again)."""
    sources = dict(settings.sources) | dict.fromkeys(values, "option")
    return replace(settings, **values, sources=sources)
