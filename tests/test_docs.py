"""The documentation's links: every relative link in README.md, docs/ and the compose file's
comments names a file of the repository that exists (and, with an anchor, a heading of it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKDOWN = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "examples").rglob("*.md")),
]
# [text](target) outside code spans; targets with a scheme (http:, mailto:) are not files.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# docs/<page>.md named in a comment of the compose file or the Dockerfiles.
COMMENT_PATH = re.compile(r"#.*?\b((?:docs|benchmarks|examples)/[\w./-]+\.md)\b")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def test_compose_and_docker_comments_name_existing_pages() -> None:
    files = [REPO / "docker-compose.yml", *sorted((REPO / "docker").glob("*"))]
    named = [
        (f.name, m) for f in files for m in COMMENT_PATH.findall(f.read_text(encoding="utf-8"))
    ]
    assert named, "the compose file's comments point at the distributed docs"
    missing = [f"{name}: {path}" for name, path in named if not (REPO / path).exists()]
    assert not missing, f"comments name missing files: {missing}"


def test_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) `[code](nope.md)`\n")
    assert _links(page) == ["#title", "missing.md"]
    assert "title" in _anchors(page)
