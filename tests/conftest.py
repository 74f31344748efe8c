"""Shared fixtures: a tiny offline model world, and the real PostgreSQL server.

Nothing here touches the network: the base model is a randomly initialised Llama with a
word-level tokenizer built in place, and the experts are random LoRA adapters of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EVAL_DATA = REPO.parent / "shared" / "data" / "model-swarms-eval"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get(
    "SWARMQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SWARMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

WORDS = [
    "A",
    "B",
    "C",
    "D",
    "yes",
    "no",
    "red",
    "blue",
    "cat",
    "dog",
    "one",
    "two",
    "three",
    "four",
]


def _server_missing(what: str, err: Exception) -> None:
    message = f"{what} is not reachable ({err})"
    if IN_CI:
        pytest.fail(f"{message}; CI needs it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the local PostgreSQL; fails (not skips) in CI when it is down."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as err:
        _server_missing(f"PostgreSQL at {POSTGRES_URL}", err)
    return POSTGRES_URL


@contextlib.contextmanager
def fresh_database(
    server_url: str, prefix: str, *, password: str | None = None, upgrade: bool = False
) -> Iterator[str]:
    """Create a database on ``server_url`` for the block, then drop it; yields its URL.

    ``password`` is written into the URL (a server that trusts local connections ignores it);
    ``upgrade`` brings the database to the latest schema first.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from swarmq.storage import Database

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name)
    if password is not None:
        url = url.set(password=password)
    rendered = url.render_as_string(hide_password=False)
    try:
        if upgrade:
            db = Database(rendered)
            db.upgrade()
            db.engine.dispose()
        yield rendered
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_database(postgres_server, "swarmq_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL: each test that takes it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def _build_world(root: Path) -> dict[str, Path]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from swarmq.testing import save_lora_experts, save_tiny_llama

    base = root / "base"
    vocab = {
        w: i
        for i, w in enumerate(
            ["<pad>", "<unk>", "<s>", "</s>", *WORDS, "Question:", "The", "answer", "is"]
        )
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
    )
    save_tiny_llama(base, fast)
    experts = root / "experts"
    # Scaled up: large enough to change the greedy outputs.
    seeds = {f"expert_{k}": 100 + k for k in range(4)}
    save_lora_experts(base, experts, seeds, scale=4.0, lora_alpha=8, task_type="CAUSAL_LM")
    import random

    rng = random.Random(0)

    def item() -> dict[str, Any]:
        a, b = rng.sample(WORDS[4:], 2)
        choices = dict(zip("ABCD", rng.sample(WORDS[4:], 4), strict=True))
        return {"question": f"{a} {b}", "choices": choices, "answer": rng.choice("ABCD")}

    data = root / "task.json"
    data.write_text(
        json.dumps(
            {
                "dataset": "tiny",
                "dev": [item() for _ in range(24)],
                "test": [item() for _ in range(24)],
            }
        )
    )
    return {"base": base, "experts": experts, "dataset": data}


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random base model, four LoRA experts of it, and a multiple-choice dataset."""
    return _build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def write_config(tiny_world: dict[str, Path], tmp_path: Path) -> Callable[..., Path]:
    """Write a search file over the tiny world; keyword arguments override [swarm]/[search]."""

    def write(
        name: str = "search.toml",
        *,
        search: dict[str, Any] | None = None,
        swarm: dict[str, Any] | None = None,
        objective: dict[str, Any] | None = None,
    ) -> Path:
        s = {"name": "tiny", "seed": 1, "particles": 6, "max_iterations": 4} | (search or {})
        w = {"patience": 3} | (swarm or {})
        o = {
            "utility": "multiple_choice",
            "dataset": str(tiny_world["dataset"]),
            "batch_size": 8,
            "max_new_tokens": 2,
        } | (objective or {})

        def table(name: str, values: dict[str, Any]) -> str:
            return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

        text = (
            table("search", s)
            + table("experts", {"path": str(tiny_world["experts"])})
            + table("base_model", {"path": str(tiny_world["base"]), "device": "cpu"})
            + table("objective", o)
            + table("swarm", w)
        )
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The offline demo's model, experts, task and search file, built once per test session.

    Tests must not change or remove these files (they may add their own beside them): every
    demo test shares them.
    """
    from swarmq.demo import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("demo") / "cache")
