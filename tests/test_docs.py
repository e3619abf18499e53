"""The README and docs/ hold together: every relative link and anchor resolves, the README stays
short, and every dated results page names its machine."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def test_slugs_follow_github() -> None:
    assert slug("One-shot search (`--strategy oneshot`)") == "one-shot-search---strategy-oneshot"
    assert slug("Many machines: a Ray cluster") == "many-machines-a-ray-cluster"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are not links
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.relative_to(REPO)} links to {target}: no such file"
        if anchor:
            assert resolved.suffix == ".md" and anchor in anchors(resolved), \
                f"{page.relative_to(REPO)} links to {target}: no such heading"


def test_the_readme_is_one_screen_of_reading() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", sorted((REPO / "docs" / "results").glob("20*.md")), ids=lambda p: p.name)
def test_a_dated_results_page_names_its_machine(page: Path) -> None:
    text = page.read_text()
    assert re.search(r"AVX2|AVX512|avx2|avx512", text), f"{page.name} does not say which CPU it was measured on"
