"""The documents: every relative link of README.md and docs/ leads to a file of the project (and
an anchor to a heading of that file), the README stays a first day's read, and docs/tests.md
names every test file of tests/."""

import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
README_LINES = 250  # the reference lives in docs/: the README is what a user needs on the first day


def anchors(document: Path) -> set[str]:
    """GitHub's anchors of the document's headings: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^#+ (.+)$", document.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_leads_to_a_file_and_heading_of_the_project() -> None:
    checked = 0
    for document in DOCUMENTS:
        for target in LINK.findall(document.read_text()):
            if re.match(r"[a-z]+:", target):  # https://..., mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            assert linked.is_file(), f"{document.name}: link to {target}, which is not a file of the project"
            if anchor:
                assert anchor in anchors(linked), f"{document.name}: link to {target}, which has no such heading"
            checked += 1
    assert checked >= 10


def test_the_readme_links_every_docs_page_and_stays_short() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    pages = {path.name for path in (PROJECT_ROOT / "docs").glob("*.md")}
    linked = {Path(target).name for target in LINK.findall(readme) if target.startswith("docs/")}
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"
    assert len(readme.splitlines()) <= README_LINES


def test_docs_tests_md_names_every_test_file_and_no_other() -> None:
    named = set(re.findall(r"`tests/(test_\w+\.py)`", (PROJECT_ROOT / "docs" / "tests.md").read_text()))
    files = {path.name for path in (PROJECT_ROOT / "tests").glob("test_*.py")}
    assert files - named == set(), f"test files docs/tests.md does not name: {sorted(files - named)}"
    assert named - files == set(), f"docs/tests.md names files that tests/ lacks: {sorted(named - files)}"
