"""swarmq.settings: precedence (option, environment, file, default), conversion and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmq.errors import ConfigError
from swarmq.settings import SETTING_NAMES, Settings, load_settings, with_overrides


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_embedded_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={})
    assert s.database_url == f"sqlite:///{tmp_path / '.swarmq' / 'swarmq.db'}"
    assert s.artifacts == tmp_path / ".swarmq" / "artifacts"
    assert s.broker_url is None and not s.distributed
    assert s.max_attempts == 3
    assert set(s.sources) == set(SETTING_NAMES)
    assert set(s.sources.values()) == {"default"}


def test_precedence_option_then_environment_then_file(tmp_path: Path) -> None:
    path = _file(tmp_path, 'max_attempts = 7\nbroker_url = "redis://file/0"\ntime_limit = 50\n')
    env = {
        "SWARMQ_SETTINGS": str(path),
        "SWARMQ_MAX_ATTEMPTS": "5",
        "SWARMQ_BROKER_URL": "redis://env/0",
    }
    s = load_settings(environ=env, broker_url="redis://option/0", soft_time_limit=10)
    assert s.broker_url == "redis://option/0"
    assert s.sources["broker_url"] == "option"
    assert s.max_attempts == 5
    assert s.sources["max_attempts"] == "environment SWARMQ_MAX_ATTEMPTS"
    assert s.time_limit == 50.0
    assert s.sources["time_limit"] == f"settings file {path}"
    assert s.soft_time_limit == 10.0
    assert s.sources["heartbeat_interval"] == "default"


def test_explicit_settings_file_wins_over_the_environment_variable(tmp_path: Path) -> None:
    named = _file(tmp_path, "max_attempts = 9\n")
    s = load_settings(
        environ={"SWARMQ_SETTINGS": str(tmp_path / "absent.toml")}, settings_file=named
    )
    assert s.max_attempts == 9


def test_empty_values_count_as_not_given(tmp_path: Path) -> None:
    s = load_settings(environ={"SWARMQ_BROKER_URL": ""}, broker_url="")
    assert s.broker_url is None and s.sources["broker_url"] == "default"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SWARMQ_MAX_ATTEMPTS": "2.5"},
            r"max_attempts from environment SWARMQ_MAX_ATTEMPTS must be an integer, got '2.5'",
        ),
        (
            {"SWARMQ_MAX_ATTEMPTS": "0"},
            r"max_attempts \(from environment SWARMQ_MAX_ATTEMPTS\) = 0: must be at least 1",
        ),
        (
            {"SWARMQ_TIME_LIMIT": "soon"},
            r"time_limit from environment SWARMQ_TIME_LIMIT must be a number of seconds,"
            r" got 'soon'",
        ),
        ({"SWARMQ_HEARTBEAT_INTERVAL": "-1"}, r"heartbeat_interval .* = -1.0: must be above 0"),
        ({"SWARMQ_DISPATCH_GRACE": "-1"}, r"dispatch_grace .* must be 0 or more"),
        ({"SWARMQ_SOFT_TIME_LIMIT": "4000"}, r"soft_time_limit .* must be below time_limit"),
        ({"SWARMQ_VISIBILITY_TIMEOUT": "100"}, r"visibility_timeout .* must be above time_limit"),
        (
            {"SWARMQ_HEARTBEAT_INTERVAL": "10", "SWARMQ_HEARTBEAT_TIMEOUT": "15"},
            r"heartbeat_timeout .* must be at least twice",
        ),
    ],
)
def test_bad_values_are_named_with_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_booleans_are_not_numbers(tmp_path: Path) -> None:
    path = _file(tmp_path, "max_attempts = true\n")
    with pytest.raises(ConfigError, match=r"max_attempts from settings file .* must be an integer"):
        load_settings(environ={}, settings_file=path)


def test_settings_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={}, settings_file=tmp_path / "absent.toml")
    bad = _file(tmp_path, "max_attempts = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(environ={}, settings_file=bad)
    unknown = _file(tmp_path, "max_attempt = 3\n")
    with pytest.raises(
        ConfigError, match="unknown setting\\(s\\) max_attempt; known: database_url"
    ):
        load_settings(environ={}, settings_file=unknown)
    folder = _file(tmp_path, "artifacts = 3\n")
    with pytest.raises(ConfigError, match=r"artifacts from settings file .* must be a folder path"):
        load_settings(environ={}, settings_file=folder)


def test_unknown_keyword_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unknown setting\\(s\\): retries"):
        load_settings(environ={}, retries=2)


def test_visibility_timeout_defaults_above_the_hard_limit() -> None:
    s = load_settings(environ={}, time_limit=100, soft_time_limit=50)
    assert s.effective_visibility_timeout == 700.0
    assert load_settings(environ={}, visibility_timeout=5000).effective_visibility_timeout == 5000


def test_environment_round_trip(tmp_path: Path) -> None:
    s = load_settings(
        environ={},
        database_url=f"sqlite:///{tmp_path}/x.db",
        artifacts=tmp_path / "a",
        broker_url="redis://127.0.0.1:6379/3",
        max_attempts=4,
    )
    again = load_settings(environ=s.to_env())
    assert again == s
    assert "SWARMQ_VISIBILITY_TIMEOUT" not in s.to_env()  # None is not written


def test_overrides_are_validated_and_sourced() -> None:
    s = load_settings(environ={})
    t = with_overrides(s, max_attempts=6)
    assert t.max_attempts == 6 and t.sources["max_attempts"] == "option"
    with pytest.raises(ConfigError, match="max_attempts \\(from option\\) = 0"):
        with_overrides(s, max_attempts=0)


def test_settings_compare_by_value_not_by_source(tmp_path: Path) -> None:
    a = Settings(database_url="sqlite://", artifacts=tmp_path, sources={"x": "option"})
    b = Settings(database_url="sqlite://", artifacts=tmp_path)
    assert a == b
