"""Settings are documented where users look and read in one place only.

docs/configuration.md's table is generated from ``worker.settings.Settings``
(``python -m worker.settings --markdown``) and must not drift from it; and no
module but ``worker/settings.py`` reads the environment (STYLE: one settings object).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from worker.settings import markdown_table

REPO = Path(__file__).parents[2]
TABLE_PAGE = REPO / "docs" / "configuration.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
REGENERATE = ".venv/bin/python -m worker.settings --markdown"

SCANNED = ("worker", "contracts")
ALLOWED = {Path("worker/settings.py")}
ENVIRONMENT_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def page_table(text: str) -> str:
    """The text between the settings-table markers."""
    assert text.count(START) == 1, f"docs/configuration.md needs exactly one {START} marker"
    assert text.count(END) == 1, f"docs/configuration.md needs exactly one {END} marker"
    before_end = text.split(END)[0]
    assert START in before_end, f"{START} must come before {END}"
    return before_end.split(START)[1]


def test_the_configuration_page_table_matches_the_settings() -> None:
    assert TABLE_PAGE.is_file(), (
        f"{TABLE_PAGE} is missing: it must hold the configuration table between {START} and "
        f"{END}, generated with `{REGENERATE}`"
    )
    table = page_table(TABLE_PAGE.read_text())
    assert table.strip() == markdown_table().strip(), (
        f"docs/configuration.md's table is out of date: replace the lines between the "
        f"settings-table markers with the output of `{REGENERATE}`"
    )


def test_the_generated_table_has_one_row_per_setting() -> None:
    from worker.settings import Settings

    rows = markdown_table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    assert all(row.startswith("| `SYNTHDETECT_") for row in rows)
    assert all(not row.endswith("|  |") for row in rows), "a setting has no description"


def environment_reads(source: str) -> list[int]:
    """Line numbers where ``source`` touches the process environment through ``os``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_NAMES) or (
            isinstance(node, ast.ImportFrom)
            and node.module in {"os", "posix"}
            and any(alias.name in ENVIRONMENT_NAMES for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import os\nos.environ['X']", [2]),
        ("import os\nx = os.getenv('X', '1')", [2]),
        ("import os as o\nv = o.environ.get('X')", [2]),
        ("from os import environ\n", [1]),
        ("from os import path, getenv as g\n", [1]),
        ('"""Never read os.environ here."""\nimport os\nos.cpu_count()', []),
    ],
)
def test_the_environment_scanner_finds_reads_and_ignores_prose(
    source: str, found: list[int]
) -> None:
    assert environment_reads(source) == found


def test_only_the_settings_module_reads_the_environment() -> None:
    offenders = []
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative in ALLOWED:
                continue
            offenders += [f"{relative}:{line}" for line in environment_reads(path.read_text())]
    assert not offenders, (
        "read settings through worker.settings.Settings, not the environment: "
        + ", ".join(offenders)
    )
