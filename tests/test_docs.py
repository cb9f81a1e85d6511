"""A clone explains itself: every ``docs/<file>.md §N`` cited in the repository is a heading of that file,
and nothing cites a document outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for pattern in ("*.py", "*.yaml", "*.md", "*.ipynb", "Makefile") for p in REPO.rglob(pattern)
           if not {".git", ".venv", "data", "runs", "outputs"} & set(p.relative_to(REPO).parts)]
# "docs/operator.md §2", "``docs/formats.md`` §1-3", "docs/formats.md §1 and §4"
CITATION = re.compile(r"docs/([\w-]+\.md)`*\s*§\s*(\d+)(?:\s*(?:-|–|and)\s*§?\s*(\d+))?")
OUTSIDE = re.compile(r"\bpaper\.md|data-formats\.md|architecture\.md|style\.md|libraries\.md|shared/[\w-]+\.md")


def _citations() -> list[tuple[Path, str, int]]:
    found = []
    for path in SOURCES:
        for m in CITATION.finditer(path.read_text(encoding="utf-8", errors="replace")):
            first, last = int(m.group(2)), int(m.group(3) or m.group(2))
            found += [(path, m.group(1), n) for n in range(first, last + 1)]
    return found


def test_the_code_cites_the_docs() -> None:
    assert len({doc for _, doc, _ in _citations()}) >= 3


@pytest.mark.parametrize(("path", "doc", "section"), _citations(), ids=lambda v: str(v).replace(str(REPO), "")[:40])
def test_every_cited_section_exists(path: Path, doc: str, section: int) -> None:
    target = REPO / "docs" / doc
    assert target.is_file(), f"{path} cites docs/{doc}, which does not exist"
    headings = re.findall(r"^#+\s*(\d+)\.", target.read_text(encoding="utf-8"), flags=re.M)
    assert str(section) in headings, f"{path} cites docs/{doc} §{section}; its sections are {headings}"


def test_nothing_cites_documents_outside_the_repository() -> None:
    outside = [f"{p.relative_to(REPO)}:{n}" for p in SOURCES if p.name != "test_docs.py"
               for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
               if OUTSIDE.search(line)]
    assert not outside, f"citations of documents a clone does not have: {outside}"
