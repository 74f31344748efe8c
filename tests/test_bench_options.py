"""benchmarks/bench_distributed.py takes its Redis database from an option, refuses one that
holds keys (it would mix its messages with them, then empty it), and runs with one worker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_distributed.py"
REDIS_URL = os.environ.get("SWARMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMQ_")}
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def empty_redis() -> Iterator[object]:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def test_the_redis_database_is_an_option_and_must_be_empty(empty_redis: object) -> None:
    client = empty_redis
    missing = _bench("--only", "c")
    assert missing.returncode == 2 and "--redis" in missing.stderr, missing.stderr
    client.set("someone-else", "keep")  # type: ignore[attr-defined]
    refused = _bench("--redis", REDIS_URL, "--only", "c")
    assert refused.returncode == 2, refused.stderr
    assert "holds 1 key(s): give an empty database" in refused.stderr, refused.stderr
    assert client.get("someone-else") == b"keep"  # type: ignore[attr-defined]
    few = _bench("--redis", REDIS_URL, "--particles", "2")
    assert few.returncode == 2 and "2: at least 4" in few.stderr, few.stderr


@pytest.mark.slow
@pytest.mark.postgres
def test_one_worker_runs(empty_redis: object, postgres_server: str) -> None:
    result = _bench(
        "--postgres",
        postgres_server,
        "--redis",
        REDIS_URL,
        "--workers",
        "1",
        "--only",
        "a",
        "--throughput-repeats",
        "0",  # the cluster and its warm-up search only, which had 2 particles for 4 experts
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
