"""Careless input about files and paths gets one clear line (exit status 2), nothing lost:
an undecodable search file, a population that cannot fit in memory, an output path that cannot
be written, a database path under a file, a foreign index.html, an expert folder linking out,
a corrupted artifact written again, and a search to delete."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from searches import closed_form, distance_utility, make_pool

from swarmq.cli import main
from swarmq.engine import create_search, list_searches
from swarmq.execution import EmbeddedRunner
from swarmq.settings import Settings
from swarmq.storage import Database, LocalArtifactStore


def _cli(root: Path, *args: str, db: str | None = None) -> Any:
    url = db or f"sqlite:///{root / 'db.sqlite'}"
    return CliRunner().invoke(main, ["--db", url, "--artifacts", str(root / "art"), *args])


def _one_line(result: Any, *expected: str) -> str:
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    for part in expected:
        assert part in text, text
    return text


@pytest.fixture
def searched(tmp_path: Path) -> tuple[Path, str]:
    """A folder with a database holding one completed closed-form search, and its id."""
    pool = make_pool(tmp_path / "pool")
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"),
        evaluate=distance_utility,
    )
    sid = create_search(
        runner.runtime, closed_form(pool, name="s", max_iterations=2), check_objective=False
    )
    runner.drive(sid)
    return tmp_path, sid


def test_a_search_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    config = tmp_path / "search.toml"
    config.write_bytes(b'[search]\nname = "caf\xe9"\n')
    text = _one_line(_cli(tmp_path, "run", str(config)), "is not UTF-8 text", "byte 0xe9")
    assert str(config) in text


def test_a_population_that_cannot_fit_in_memory_is_refused_with_the_estimate(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config(search={"particles": 10_000_000})
    _one_line(
        _cli(tmp_path, "run", str(config)),
        "search.particles = 10000000 needs about",
        "GiB of memory",
        "lower search.particles",
    )
    assert list_searches(Database(f"sqlite:///{tmp_path / 'db.sqlite'}")) == []


def test_outputs_to_a_path_that_cannot_be_written(searched: tuple[Path, str]) -> None:
    root, sid = searched
    blocker = root / "a-file"
    blocker.write_text("not a folder")
    for command in (
        ["export", sid, "--out", str(blocker / "out")],
        ["report", sid, "--out", str(blocker / "report")],
        ["history", sid, "--out", str(blocker / "history.txt")],
        ["history", sid, "--format", "csv", "--out", str(blocker / "history.csv")],
    ):
        _one_line(_cli(root, *command), "error: cannot use", str(blocker), "Not a directory")
    assert blocker.read_text() == "not a folder"


def test_a_sqlite_path_under_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    url = f"sqlite:///{tmp_path / 'a-file' / 'db.sqlite'}"
    for command in (["list"], ["status"], ["db", "upgrade"]):
        _one_line(_cli(tmp_path, *command, db=url), "cannot create the folder", "--db")


def test_report_never_replaces_a_foreign_index_html(searched: tuple[Path, str]) -> None:
    root, sid = searched
    site = root / "site"
    site.mkdir()
    (site / "index.html").write_text("<html>my own page</html>")
    _one_line(_cli(root, "report", sid, "--out", str(site)), "not a swarmq report", "--overwrite")
    assert (site / "index.html").read_text() == "<html>my own page</html>"
    assert _cli(root, "report", sid, "--out", str(site), "--overwrite").exit_code == 0
    assert "my own page" not in (site / "index.html").read_text()
    # An earlier swarmq report is replaced without asking.
    assert _cli(root, "report", sid, "--out", str(site)).exit_code == 0


def test_export_names_the_option_to_overwrite(searched: tuple[Path, str]) -> None:
    root, sid = searched
    target = root / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    text = _one_line(_cli(root, "export", sid, "--out", str(target)), "pass --overwrite")
    assert "overwrite=True" not in text
    assert (target / "notes.txt").read_text() == "keep"


def test_an_expert_folder_linking_out_is_refused_without_listing_the_target(
    tmp_path: Path, write_config: Callable[..., Path], tiny_world: dict[str, Path]
) -> None:
    pool = tmp_path / "experts"
    shutil.copytree(tiny_world["experts"], pool)
    (pool / "zz-etc").symlink_to("/etc")
    config = write_config()
    config.write_text(config.read_text().replace(str(tiny_world["experts"]), str(pool)))
    text = _one_line(_cli(tmp_path, "run", str(config)), "zz-etc", "is a link to a folder")
    assert "passwd" not in text and "hostname" not in text


def test_a_corrupted_artifact_is_repaired_by_a_later_write(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    vector = np.arange(16, dtype=np.float32)
    digest = store.put_vector(vector)
    path = tmp_path / "store" / digest[:2] / f"{digest}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(data))
    assert store.put_vector(vector) == digest
    assert np.array_equal(store.get_vector(digest), vector)
    # A file swapped for a link is replaced by a file too.
    outside = tmp_path / "outside"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    store.put_vector(vector)
    assert path.is_file() and not path.is_symlink()


def test_delete_removes_a_search_and_asks_first(searched: tuple[Path, str]) -> None:
    root, sid = searched
    db = Database(f"sqlite:///{root / 'db.sqlite'}")
    # Without a terminal to confirm on, it asks for --yes and deletes nothing.
    _one_line(_cli(root, "delete", sid), "pass --yes")
    assert [s.id for s in list_searches(db)] == [sid]
    _one_line(_cli(root, "delete", "nope", "--yes"), "search 'nope' does not exist")
    result = _cli(root, "delete", sid, "--yes")
    assert result.exit_code == 0 and f"search {sid} deleted" in result.output, result.output
    assert list_searches(db) == []
    with db.session() as s:
        from sqlalchemy import text

        from swarmq.storage._models import Base

        tables = [t.name for t in Base.metadata.sorted_tables if "search_id" in t.c]
        assert {"particles", "evaluations", "baselines"} <= set(tables)
        for table in tables:
            assert s.execute(text(f"select count(*) from {table}")).scalar() == 0, table


def test_delete_refuses_a_running_search(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    runner = EmbeddedRunner(Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"))
    sid = create_search(runner.runtime, closed_form(pool, name="s"), check_objective=False)
    _one_line(_cli(tmp_path, "delete", sid, "--yes"), "is running", f"swarmq cancel {sid}")
    assert _cli(tmp_path, "cancel", sid).exit_code == 0
    assert _cli(tmp_path, "delete", sid, "--yes").exit_code == 0
