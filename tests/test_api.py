"""The front door: ``import swarmq`` alone runs, resumes and reads a search."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import swarmq

REPO = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md's 'From Python' section has no python example"
    return match.group(1)


@pytest.fixture(scope="module")
def demo_config(demo_assets: Any) -> Path:
    return Path(demo_assets.config_path)


def test_import_is_light_and_exports_the_front_door() -> None:
    code = (
        "import sys, swarmq\n"
        "assert 'torch' not in sys.modules and 'swarmq.config' not in sys.modules\n"
        "print(sorted(n for n in swarmq.__all__ if callable(getattr(swarmq, n))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "run_search" in out and "register_utility" in out
    with pytest.raises(AttributeError, match="no attribute 'engine_internals'"):
        swarmq.engine_internals  # noqa: B018


def test_readme_example_runs(
    demo_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = _readme_example().replace('"search.toml"', repr(str(demo_config)))
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = scope["result"]
    assert isinstance(result, swarmq.SearchResult)
    assert result.status == "completed"
    assert result.final is not None and result.final.global_best.test is not None
    assert (tmp_path / "swarmq.db").is_file()


def test_run_resume_and_read_through_the_api(demo_config: Path, tmp_path: Path) -> None:
    settings = swarmq.load_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art")
    config = swarmq.load_config(demo_config)
    assert isinstance(config, swarmq.SearchConfig)
    result = swarmq.run_search(config, settings)
    again = swarmq.resume_search(result.search_id, settings)  # nothing left: the same result
    assert again == result
    assert swarmq.search_result(result.search_id, settings) == result
    assert [s.id for s in swarmq.list_searches(settings)] == [result.search_id]
    # The runner's runtime was current only while it ran: nothing is left installed.
    from swarmq.engine import current_runtime

    with pytest.raises(swarmq.SwarmqError, match="no swarmq runtime is installed"):
        current_runtime()


def test_bad_input_raises_before_anything_is_recorded(tmp_path: Path) -> None:
    settings = swarmq.load_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art")
    with pytest.raises(swarmq.SwarmqError, match="does not exist"):
        swarmq.run_search(tmp_path / "missing.toml", settings)
    with pytest.raises(swarmq.SwarmqError, match="nope"):
        swarmq.search_result("nope", settings)
