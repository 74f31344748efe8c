"""Security: only JSON crosses the broker, only safetensors is read as weights, artifact names
cannot leave the store, credentials are never shown, and Flower is behind authentication.

The broker and credential tests run real processes: a worker on a password-protected Redis of
the test's own with a database URL that carries a password (the shared PostgreSQL trusts local
connections and ignores it), and the CLI against servers that are down.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from clusters import (
    Cluster,
    PrivateRedis,
    closed_form,
    free_port,
    make_pool,
    running_cluster,
    swarmq_env,
    worker_env,
)
from conftest import fresh_database
from sqlalchemy import update

from swarmq.cli import main
from swarmq.engine import create_search, run_evaluation, search_summary
from swarmq.errors import ArtifactError
from swarmq.execution import EmbeddedRunner, app
from swarmq.settings import Settings
from swarmq.storage import Database, EvaluationRow

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "S3cret-pw-4217"  # must never appear in any output


class _Exploit:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


# --- the broker: JSON only ----------------------------------------------------------------------


def test_only_json_is_sent_or_accepted() -> None:
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert (conf.task_serializer, conf.result_serializer, conf.event_serializer) == (
        "json",
        "json",
        "json",
    )
    # The worker entry point (celery -A swarmq.execution.worker) serves this same app.
    import swarmq.execution.worker as worker

    assert worker.app is app and worker.app.conf.accept_content == ["json"]


@pytest.fixture(scope="module")
def secret_db(postgres_server: str) -> Iterator[str]:
    """A fresh database on the shared PostgreSQL, addressed by a URL with a password."""
    with fresh_database(postgres_server, "swarmq_sec", password=PASSWORD, upgrade=True) as url:
        yield url


@pytest.fixture(scope="module")
def secret_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(password=PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def secret_env(
    secret_db: str, secret_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("secure")
    return worker_env(
        root, database=secret_db, broker=secret_redis.url, evaluate="fault_hooks:evaluate"
    )


@pytest.fixture(scope="module")
def secret_cluster(secret_env: dict[str, str]) -> Iterator[Cluster]:
    """A coordinator and an evaluation worker whose database and broker URLs hold passwords."""
    with running_cluster(secret_env, ("eval",)) as c:
        yield c


def _logs(cluster: Cluster) -> str:
    return "\n".join(
        (cluster.logs / f"{name}.log").read_text(errors="replace") for name in cluster.procs
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_a_pickled_message_is_refused_by_a_real_worker(
    secret_env: dict[str, str],
    secret_cluster: Cluster,
    secret_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    from kombu import Connection

    marker = tmp_path / "pwned"
    with Connection(secret_redis.url) as conn:
        producer = conn.Producer()
        for queue in ("swarmq.evaluate", "swarmq.coordinator"):
            task = "swarmq.evaluate" if queue == "swarmq.evaluate" else "swarmq.coordinate"
            # A message as Celery's protocol 2 frames one, but pickled, with a payload that
            # runs code when it is unpickled.
            producer.publish(
                ((), {"search_id": _Exploit(marker)}, {}),
                serializer="pickle",
                routing_key=queue,
                exchange=queue,
                headers={"task": task, "id": str(uuid.uuid4()), "lang": "py"},
                declare=[],
            )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        refused = _logs(secret_cluster).count("untrusted content of type pickle")
        if refused >= 2:
            break
        time.sleep(0.1)
    assert refused >= 2, secret_cluster.tails()
    assert not marker.exists()
    # The messages were dropped, not left to be delivered again, and the workers live on.
    import redis

    broker = redis.Redis.from_url(secret_redis.url)

    def pickled_left() -> list[Any]:
        waiting = [
            json.loads(raw)
            for queue in ("swarmq.evaluate", "swarmq.coordinator")
            for raw in broker.lrange(queue, 0, -1)
        ] + [json.loads(raw)[0] for raw in broker.hvals("unacked")]
        return [m for m in waiting if m["content-type"] != "application/json"]

    deadline = time.monotonic() + 10
    while pickled_left() and time.monotonic() < deadline:  # acknowledged just after the log
        time.sleep(0.1)
    assert pickled_left() == []
    assert all(p.poll() is None for p in secret_cluster.procs.values())


# --- weights: safetensors only ------------------------------------------------------------------

# (module, function) pairs that unpickle; any call of one of them in swarmq is refused.
_UNPICKLERS = {
    ("torch", "load"),
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("dill", "load"),
    ("dill", "loads"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("joblib", "load"),
    ("marshal", "load"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("torch.serialization", "load"),
}
_PICKLE_MODULES = {"pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "_pickle"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _loader_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                if name and name.split(".")[0] in _PICKLE_MODULES:
                    found.append((node.lineno, f"import {name}"))
            if isinstance(node, ast.ImportFrom) and node.module in {m for m, _f in _UNPICKLERS}:
                for alias in node.names:
                    if (node.module, alias.name) in _UNPICKLERS:
                        found.append((node.lineno, f"from {node.module} import {alias.name}"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        module, _, func = name.rpartition(".")
        if (module, func) in _UNPICKLERS or (module.endswith("torch") and func == "load"):
            found.append((node.lineno, name))
        keywords = {k.arg: k.value for k in node.keywords}
        allow = keywords.get("allow_pickle")
        if func == "load" and isinstance(allow, ast.Constant) and allow.value is True:
            found.append((node.lineno, f"{name}(allow_pickle=True)"))
        # A model's from_pretrained reads pytorch_model.bin (a pickle) when a folder has no
        # safetensors: every model loader must insist on safetensors.
        owner = module.rsplit(".", 1)[-1]
        is_model = owner.startswith("AutoModel") or ("For" in owner and "Peft" not in owner)
        if func == "from_pretrained" and is_model:
            safe = keywords.get("use_safetensors")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append((node.lineno, f"{name}(...) without use_safetensors=True"))
    return found


def test_no_pickle_loader_in_the_package() -> None:
    offenders = []
    for path in sorted((REPO / "swarmq").rglob("*.py")):
        for line, what in _loader_calls(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert offenders == []


def test_the_scan_finds_what_it_looks_for() -> None:
    # The scan above would pass on an empty list of findings: make sure it can fail.
    sample = (
        "import pickle\nimport torch\nfrom yaml import unsafe_load\nimport numpy as np\n"
        "torch.load('x')\nnp.load('x', allow_pickle=True)\n"
        "AutoModelForCausalLM.from_pretrained('x')\n"
        "AutoModelForCausalLM.from_pretrained('x', use_safetensors=True)\n"
        "AutoTokenizer.from_pretrained('x')\n"
    )
    found = [what for _line, what in _loader_calls(ast.parse(sample))]
    assert found == [
        "import pickle",
        "from yaml import unsafe_load",
        "torch.load",
        "np.load(allow_pickle=True)",
        "AutoModelForCausalLM.from_pretrained(...) without use_safetensors=True",
    ]


def _cli(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        [
            "--db",
            f"sqlite:///{tmp_path / 'db.sqlite'}",
            "--artifacts",
            str(tmp_path / "art"),
            *args,
        ],
    )


def test_pickled_expert_adapter_is_refused_unread(
    tmp_path: Path, tiny_world: dict[str, Path], write_config: Callable[..., Path]
) -> None:
    marker = tmp_path / "pwned"
    pool = tmp_path / "experts"
    shutil.copytree(tiny_world["experts"], pool)
    victim = sorted(pool.iterdir())[1]
    (victim / "adapter_model.safetensors").unlink()
    (victim / "adapter_model.bin").write_bytes(pickle.dumps(_Exploit(marker)))
    config = write_config()
    config.write_text(
        config.read_text().replace(json.dumps(str(tiny_world["experts"])), json.dumps(str(pool)))
    )
    result = _cli(tmp_path, "run", str(config))
    assert result.exit_code == 2, result.output
    assert "pickled weights ['adapter_model.bin']" in result.output
    assert "safetensors only" in result.output and "Traceback" not in result.output
    assert not marker.exists()


def test_base_model_with_pickled_weights_is_refused_unread(
    tmp_path: Path, tiny_world: dict[str, Path], write_config: Callable[..., Path]
) -> None:
    marker = tmp_path / "pwned"
    base = tmp_path / "base"
    shutil.copytree(tiny_world["base"], base)
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(marker)))
    config = write_config()
    config.write_text(
        config.read_text().replace(json.dumps(str(tiny_world["base"])), json.dumps(str(base)))
    )
    result = _cli(tmp_path, "run", str(config), "--quiet")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "cannot load base model" in text and "model.safetensors" in text, text
    assert not marker.exists()


# --- artifacts: names cannot leave the store ----------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["../../../../etc/passwd", "/etc/passwd", "A" * 64, "0" * 63 + "/", "x" * 64]
)
def test_artifact_name_from_the_record_cannot_leave_the_store(bad: str, tmp_path: Path) -> None:
    from swarmq.config import parse_config

    pool = make_pool(tmp_path / "pool", 3)
    cfg = parse_config(
        {
            "search": {"particles": 3, "max_iterations": 1},
            "experts": {"path": str(pool)},
            "base_model": {"path": "unused"},
            "objective": {"utility": "exact_match", "dataset": str(pool / "none.json")},
        }
    )
    read: list[np.ndarray] = []

    def evaluate(*args: Any) -> tuple[float, dict[str, Any]]:
        read.append(args[3])
        return 0.0, {}

    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=evaluate
    )
    sid = create_search(runner.runtime, cfg, check_objective=False)
    with runner.runtime.db.session() as s:  # a tampered (or hostile) record
        s.execute(
            update(EvaluationRow)
            .where(EvaluationRow.search_id == sid, EvaluationRow.particle == 1)
            .values(position_hash=bad)
        )
    with pytest.raises(ArtifactError, match="is not an artifact hash"):
        run_evaluation(runner.runtime, sid, 0, 1)
    assert read == []
    summary = search_summary(runner.runtime.db, sid)
    assert summary.status == "failed" and "not an artifact hash" in (summary.stop_reason or "")


def test_a_store_file_swapped_for_a_link_outside_is_refused(tmp_path: Path) -> None:
    from swarmq.storage import LocalArtifactStore

    store = LocalArtifactStore(tmp_path / "store")
    digest = store.put_vector(np.arange(4, dtype=np.float32))
    outside = tmp_path / "outside.safetensors"
    other = LocalArtifactStore(tmp_path / "other")
    other_digest = other.put_vector(np.ones(4, dtype=np.float32))
    shutil.copy(tmp_path / "other" / other_digest[:2] / f"{other_digest}.safetensors", outside)
    path = tmp_path / "store" / digest[:2] / f"{digest}.safetensors"
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(ArtifactError, match="corrupted"):
        store.get_vector(digest)


# --- credentials are never shown ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),  # Redis: no user name
        ("postgresql+psycopg://u:pw@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # a raw "@" in it
        ("amqp://guest:pw@h:5672//", "amqp://guest:***@h:5672//"),
        (
            "cannot reach redis://:pw@h/0 or amqp://u:pw@h//",
            "cannot reach redis://:***@h/0 or amqp://u:***@h//",
        ),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("sqlite:////data/a:b@c.db", "sqlite:////data/a:b@c.db"),
        # Credentials in the query string, which libpq, psycopg and redis-py all accept.
        ("postgresql://h/db?password=pw", "postgresql://h/db?password=***"),
        ("redis://h:6379/0?password=pw", "redis://h:6379/0?password=***"),
        (
            "postgresql+psycopg://u@h/db?sslmode=require&PASSWORD=p%40w&sslpassword=k",
            "postgresql+psycopg://u@h/db?sslmode=require&PASSWORD=***&sslpassword=***",
        ),
        ("postgresql://u:pw@h/db?password=pw2", "postgresql://u:***@h/db?password=***"),
        ("cannot reach redis://h/0?password=pw now", "cannot reach redis://h/0?password=*** now"),
        ("redis://h/0?db=1&socket_timeout=5", "redis://h/0?db=1&socket_timeout=5"),
    ],
)
def test_passwords_are_redacted_in_every_url_form(url: str, shown: str) -> None:
    from swarmq.storage import redact_url

    assert redact_url(url) == shown


def _swarmq(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The real command line in its own process: what a user (and a log collector) sees,
    stdout, stderr and log records together."""
    return subprocess.run(
        [sys.executable, "-m", "swarmq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _shown(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """The command line in this process: its exit status, and everything it showed: output,
    error message, every log record of any level, and an unexpected exception's traceback."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        result = CliRunner(env=env).invoke(main, args)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    shown = [result.output, *(r.getMessage() for r in records)]
    shown += [str(r.exc_info[1]) for r in records if r.exc_info and r.exc_info[1]]
    if (
        result.exc_info is not None
        and result.exception is not None
        and not isinstance(result.exception, SystemExit)
    ):
        shown.append("".join(traceback.format_exception(*result.exc_info)))
    return result.exit_code, "\n".join(shown)


def _clean_env() -> dict[str, str | None]:
    """CliRunner's environment: this process's SWARMQ_* variables unset."""
    return {k: None for k in os.environ if k.startswith(("SWARMQ_", "FLOWER_"))}


@pytest.mark.parametrize("form", ["user-info", "query"])
def test_credentials_are_not_shown_when_the_servers_are_down(tmp_path: Path, form: str) -> None:
    config = closed_form(make_pool(tmp_path / "pool", 2), "x")
    yaml_config = tmp_path / "search.yaml"
    yaml_config.write_text(yaml.safe_dump(json.loads(config.to_json())))
    if form == "user-info":
        db_url = f"postgresql+psycopg://swarmq:{PASSWORD}@127.0.0.1:{free_port()}/swarmq"
        redis_url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    else:  # the password as a query parameter, which the drivers accept as well
        db_url = f"postgresql+psycopg://swarmq@127.0.0.1:{free_port()}/swarmq?password={PASSWORD}"
        redis_url = f"redis://127.0.0.1:{free_port()}/0?password={PASSWORD}"
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(
        f'database_url = "{db_url}"\n'
        f'broker_url = "amqp://guest:{PASSWORD}@127.0.0.1:{free_port()}//"\n'
    )
    from_env = {"SWARMQ_DATABASE_URL": db_url, "SWARMQ_BROKER_URL": redis_url}
    variants = [
        # from the environment, from a settings file, from options
        ([], _clean_env() | from_env),
        ([], _clean_env() | {"SWARMQ_SETTINGS": str(settings_file)}),
        (["--db", db_url, "--broker", redis_url], _clean_env()),
    ]
    commands = [
        ["settings"],
        ["status"],
        ["status", "abc"],
        ["list"],
        ["submit", str(yaml_config)],
        ["resume", "abc"],
        ["reconcile"],
        ["cancel", "abc"],
        ["watch", "abc"],
        ["worker"],
        ["db", "upgrade"],
    ]
    for options, env in variants:
        env = env | {"SWARMQ_ARTIFACTS": str(tmp_path / "art")}
        for command in commands:
            code, shown = _shown([*options, *command], env)
            assert PASSWORD not in shown, (command, shown)
            assert "Traceback" not in shown, (command, shown)
            if command == ["settings"]:
                assert code == 0 and "***" in shown, shown
            else:
                assert code == 2 and "error:" in shown, (command, shown)
    # The same, as separate processes (what a terminal or a log collector receives).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMQ_")} | from_env
    for command in (["settings"], ["submit", str(yaml_config)], ["worker"]):
        result = _swarmq(*command, env=env)
        assert PASSWORD not in result.stdout + result.stderr, result.stderr
        assert result.returncode == (0 if command == ["settings"] else 2), result.stderr


@pytest.mark.postgres
@pytest.mark.slow
def test_credentials_are_not_shown_by_a_live_cluster(
    secret_env: dict[str, str], secret_cluster: Cluster, tmp_path: Path
) -> None:
    env = _clean_env() | swarmq_env(secret_env)
    pool = make_pool(tmp_path / "pool", 3)
    data = tmp_path / "data.json"
    item = {"question": "q", "answer": "a"}
    data.write_text(json.dumps({"dataset": "x", "dev": [item], "test": [item]}))
    ok = tmp_path / "ok.toml"
    ok.write_text(
        f'[search]\nname = "returns-distance"\nparticles = 3\nmax_iterations = 1\n'
        f'[experts]\npath = "{pool}"\n[base_model]\npath = "unused"\n'
        f'[objective]\nutility = "exact_match"\ndataset = "{data}"\n'
    )
    # One search that completes and one whose utility fails, so that errors are shown too.
    failing = tmp_path / "nan.toml"
    failing.write_text(ok.read_text().replace("returns-distance", "returns-nan"))
    outputs: list[str] = []
    ids = []
    for config in (ok, failing):
        code, shown = _shown(["submit", str(config)], env)
        assert code == 0, shown
        ids.append(shown.split()[0])
        outputs.append(shown)
    db = Database(secret_env["SWARMQ_DATABASE_URL"])
    deadline = time.monotonic() + 60
    for sid, final in zip(ids, ("completed", "failed"), strict=True):
        while search_summary(db, sid).status != final and time.monotonic() < deadline:
            time.sleep(0.1)
        assert search_summary(db, sid).status == final, secret_cluster.tails()
    for args in (
        ["settings"],
        ["list"],
        ["status"],
        *[["status", sid] for sid in ids],
        *[["watch", sid, "--interval", "0.2"] for sid in ids],
        ["reconcile"],
        ["resume", ids[1]],
        ["cancel", ids[1]],
    ):
        code, shown = _shown(args, env)
        outputs.append(shown)
        assert code in (0, 2), (args, shown)
    result = _swarmq("status", ids[1], env=secret_env)  # a process of its own too
    outputs.append(result.stdout + result.stderr)
    shown = "\n".join(outputs) + _logs(secret_cluster)
    assert "finite" in shown  # the failure was shown...
    assert "redis://:***@" in shown  # ...and the URLs, redacted
    assert PASSWORD not in shown


# --- Flower -------------------------------------------------------------------------------------


def test_flower_refuses_to_start_without_authentication(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMQ_", "FLOWER_"))}
    result = _swarmq("--broker", f"redis://127.0.0.1:{free_port()}/0", "flower", env=env)
    assert result.returncode == 2
    assert "--basic-auth" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("auth", ["admin:", ":", ":pw", "admin:pw,guest:", "admin"])
def test_flower_refuses_an_empty_user_or_password(auth: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMQ_", "FLOWER_"))}
    broker = f"redis://127.0.0.1:{free_port()}/0"
    for how in (["--basic-auth", auth], []):
        result = _swarmq(
            "--broker",
            broker,
            "flower",
            *how,
            env=env | ({} if how else {"FLOWER_BASIC_AUTH": auth}),
        )
        assert result.returncode == 2, result.stderr
        assert "needs a user and a password, both non-empty" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "pw" not in result.stderr


def _http(url: str, auth: str | None = None) -> int:
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


@pytest.mark.slow
def test_every_flower_endpoint_needs_the_credentials(tmp_path: Path) -> None:
    redis_url = os.environ.get("SWARMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMQ_", "FLOWER_"))}
    env |= {"SWARMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    env |= {"FLOWER_BASIC_AUTH": f"admin:{PASSWORD}"}
    log = (tmp_path / "flower.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmq", "--broker", redis_url, "flower", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                _http(base + "/healthcheck")
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "flower.log").read_text()
                time.sleep(0.2)
        paths = [
            "/metrics",
            "/healthcheck",
            "/",
            "/workers",
            "/tasks",
            "/api/workers",
            "/api/task/types",
            "/static/css/flower.css",
            "/no-such-page",
        ]
        for path in paths:
            assert _http(base + path) == 401, path
            assert _http(base + path, f"admin:{PASSWORD}x") == 401, path
            assert _http(base + path, "admin:") == 401, path
        assert _http(base + "/metrics", f"admin:{PASSWORD}") == 200
        assert _http(base + "/healthcheck", f"admin:{PASSWORD}") == 200
        # It listens on the loopback address only, unless told otherwise.
        banner = (tmp_path / "flower.log").read_text()
        assert f"Flower on http://127.0.0.1:{port}" in banner and PASSWORD not in banner
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is chosen
            outward = probe.getsockname()[0]
        if not outward.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((outward, port), timeout=2).close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_docker_compose_puts_flower_behind_basic_auth() -> None:
    compose = REPO / "docker-compose.yml"
    assert compose.is_file(), f"{compose.name} is missing: the deployment must ship one"
    services = yaml.safe_load(compose.read_text())["services"]
    assert "flower" in services, "docker-compose.yml has no flower service"
    flower = services["flower"]
    command = flower.get("command") or []
    argv = command.split() if isinstance(command, str) else [str(a) for a in command]
    assert "--no-auth" not in argv, "the flower service runs without authentication"
    environment = flower.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    auth_options = [a for a in argv if a.startswith(("--basic-auth", "--basic_auth"))]
    auth = environment.get("FLOWER_BASIC_AUTH") or (auth_options[0] if auth_options else None)
    assert auth, "the flower service sets neither FLOWER_BASIC_AUTH nor --basic-auth"
    # The credentials come from the environment (.env), required, with no default in the file.
    assert "${FLOWER_BASIC_AUTH:?" in str(auth) or "${FLOWER_BASIC_AUTH?" in str(auth), auth
    # The service runs `swarmq flower`, which refuses to start without them, or with an empty
    # user or password (which ${FLOWER_BASIC_AUTH:?} lets through: "admin:" is not empty).
    assert argv[:1] == ["flower"], argv
    dockerfile = REPO / flower["build"]["dockerfile"]
    assert 'ENTRYPOINT ["swarmq"]' in dockerfile.read_text(), dockerfile
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMQ_", "FLOWER_"))}
    broker = f"redis://127.0.0.1:{free_port()}/0"
    for empty in ("admin:", ":"):
        result = _swarmq("--broker", broker, *argv, env=env | {"FLOWER_BASIC_AUTH": empty})
        assert result.returncode == 2 and "both non-empty" in result.stderr, result.stderr
    # Its health check sends the credentials: no endpoint answers without them.
    assert "FLOWER_BASIC_AUTH" in " ".join(flower["healthcheck"]["test"])


def test_docker_compose_file_is_valid() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMQ_", "FLOWER_"))}
    passwords = {"POSTGRES_PASSWORD": "x", "REDIS_PASSWORD": "x", "FLOWER_BASIC_AUTH": "a:b"}
    command = [compose, "-f", str(REPO / "docker-compose.yml"), "config", "-q"]
    ok = subprocess.run(command, env=env | passwords, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    for missing in passwords:
        without = {k: v for k, v in passwords.items() if k != missing}
        bad = subprocess.run(command, env=env | without, capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and missing in bad.stderr, bad.stderr
