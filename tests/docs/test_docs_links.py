"""Every relative link in the docs (README.md, docs/, benchmarks/RESULTS.md) points to a file of this repository,
and every #anchor to a heading of the linked page; no page links outside the repository by a relative path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "RESULTS.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub-style heading anchors of a markdown page."""
    out = set()
    for line in page.read_text().splitlines():
        m = re.match(r"^#+\s+(.*)$", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return out


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for m in LINK.finditer(page.read_text()):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(REPO) or not dest.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_docs_and_code_carry_no_tracker_history_or_outside_files() -> None:
    """No "issue N" history and no pointers to design notes that are not in the repository."""
    pattern = re.compile(r"\b[Ii]ssue [0-9]+\b|\b(DSPARK|DESIGN)\.md\b")
    roots = [REPO / "docs", REPO / "operator", REPO / "trainer", REPO / "tests", REPO / "benchmarks", REPO / "charts"]
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.suffix in (".py", ".md", ".yaml", ".json", ".sh", ".txt") and "results" not in path.parts:
                for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    if pattern.search(line) and path != Path(__file__):
                        found.append(f"{path.relative_to(REPO)}:{i}")
    for name in ("README.md", "Makefile", "Dockerfile"):
        text = (REPO / name).read_text()
        found += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not found, found
