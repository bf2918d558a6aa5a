"""The README stays a short guide for users, and no link in it or in docs/ is dead.

The README opens with the two commands (demo, tests), stays under the length the
before-stop hook accepts, and every relative Markdown link in README.md and
docs/*.md names a file or folder of the repository, and a heading there when it
carries an anchor (``docs/retraining.md#retrain-workers``). The licence pyproject
declares is in LICENSE.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 400
FIRST_COMMANDS = ("scripts/demo.sh", "scripts/test.sh")

# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> str:
    """``text`` without fenced code blocks (code may hold brackets that are no links)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return "\n".join(kept)


def relative_targets(text: str) -> list[str]:
    """Link targets that point into the repository (anchors and URLs left out)."""
    return [path for path, _ in relative_links(text) if path]


def relative_links(text: str) -> list[tuple[str, str]]:
    """(path, anchor) of every link that is not a URL; path "" = this page."""
    links = []
    for target in LINK.findall(prose(text)):
        if not target.startswith(EXTERNAL):
            path, _, anchor = target.partition("#")
            links.append((path, anchor))
    return links


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text``."""
    found = set()
    for line in prose(text).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if heading:
            title = heading.group(1).lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def first_code_lines(text: str, count: int) -> list[str]:
    """The first ``count`` lines inside fenced code blocks, in order."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if fenced and line.strip():
            lines.append(line.strip())
            if len(lines) == count:
                break
    return lines


def test_link_finder_reads_targets_and_skips_urls_anchors_and_code() -> None:
    text = (
        "See [a](docs/a.md), [b](docs/b.md#part), [c](#local), [d](https://x.org/y),\n"
        '![img](pics/p.png "title") and [e](<docs/e.md>).\n'
        "```python\nx = [y](not_a_link)\n```\n"
    )
    assert relative_targets(text) == ["docs/a.md", "docs/b.md", "pics/p.png", "docs/e.md"]


def test_readme_stays_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (limit {MAX_README_LINES}): move reference material "
        "and measurements to docs/"
    )


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text.split("```", 2)[1]
    assert text.index("```") < text.index("\n## "), "the commands come before any section"
    commands = [line.split("#")[0].strip() for line in first_code_lines(text, 2)]
    assert commands == list(FIRST_COMMANDS), first_block


def test_anchors_follow_github_headings() -> None:
    text = "# Title\n## Embedded use: classify `review`\n```\n# not a heading\n```\n"
    assert anchors(text) == {"title", "embedded-use-classify-review"}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files_that_exist(page: Path) -> None:
    dead = [
        target
        for target in relative_targets(page.read_text())
        if not (page.parent / target).resolve().exists()
    ]
    assert not dead, f"{page.relative_to(REPO)} links to missing paths: {dead}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_anchored_links_name_a_heading(page: Path) -> None:
    dead = []
    for path, anchor in relative_links(page.read_text()):
        target = (page.parent / path).resolve() if path else page
        checkable = anchor and target.suffix == ".md" and target.is_file()
        if checkable and anchor not in anchors(target.read_text()):
            dead.append(f"{path}#{anchor}")
    assert not dead, f"{page.relative_to(REPO)} links to missing headings: {dead}"


def test_docs_folder_holds_the_moved_research() -> None:
    names = {page.name for page in DOCS}
    assert {"performance.md", "retraining.md", "default-model.md"} <= names


def test_license_is_the_apache_license() -> None:
    license_file = REPO / "LICENSE"
    assert license_file.is_file(), "pyproject declares Apache-2.0: LICENSE must hold its text"
    text = license_file.read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
