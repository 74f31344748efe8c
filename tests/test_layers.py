"""The package layout's rules, checked on the source: no package reaches into another's
private modules (the layers contract itself is `lint-imports`, run by CI from pyproject.toml)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "swarmq"


def _private_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        home = rel.parts[1] if len(rel.parts) > 2 else None  # a top-level module has no package
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            for module in modules:
                parts = module.split(".")
                if (
                    parts[0] == "swarmq"
                    and len(parts) > 2
                    and parts[1] != home
                    and parts[2].startswith("_")
                ):
                    found.append(f"{rel}:{node.lineno} imports {module}")
    return found


def test_no_package_imports_another_packages_private_modules() -> None:
    assert _private_imports() == []


def test_the_check_sees_a_private_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "swarmq"
    (fake / "reporting").mkdir(parents=True)
    (fake / "reporting" / "x.py").write_text("from swarmq.engine._common import config_of\n")
    (fake / "engine").mkdir()
    (fake / "engine" / "y.py").write_text("from swarmq.engine._common import config_of\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _private_imports() == ["swarmq/reporting/x.py:1 imports swarmq.engine._common"]
