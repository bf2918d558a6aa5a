"""The layer rule of ``worker.architecture`` holds for every import, and the README says it.

A module may import from its own layer and the layers before it. Imports inside
functions count too (a lazy import that breaks the order is still a dependency),
except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from worker.architecture import LAYERS, layer_of, markdown_table

REPO = Path(__file__).parents[2]
README = REPO / "README.md"
START = "<!-- layers:start -->"
END = "<!-- layers:end -->"
PACKAGES = ("worker", "contracts")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` outside TYPE_CHECKING."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from worker.classify import runner` imports worker.classify.runner
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports in ``source`` (the text of ``module``) that reach a later layer."""
    own = layer_of(module)
    assert own is not None, f"{module} is in no layer of worker.architecture.LAYERS"
    bad = []
    for line, target in imported_modules(source, module, is_package):
        layer = layer_of(target)
        if layer is not None and layer > own:
            bad.append(
                f"{module}:{line} imports {target} "
                f"({LAYERS[own][0]} may not import {LAYERS[layer][0]})"
            )
    return bad


def project_modules() -> list[tuple[Path, str]]:
    return [
        (path, module_name(path))
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    ]


def test_every_module_is_in_a_layer() -> None:
    missing = [name for _, name in project_modules() if layer_of(name) is None]
    missing = [name for name in missing if name != "worker" and name != "worker.architecture"]
    assert not missing, f"add these to worker.architecture.LAYERS: {missing}"


def test_no_module_imports_a_later_layer() -> None:
    found = []
    for path, name in project_modules():
        if layer_of(name) is None:
            continue
        found += violations(path.read_text(), name, path.name == "__init__.py")
    assert not found, "layer violations:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("worker.classify.pipeline", "from worker.queue.tasks import runtime\n"),
        ("worker.inference.engine", "def f():\n    import worker.classify.results\n"),
        ("contracts.jobs", "from worker.settings import Settings\n"),
        ("worker.classify.runner", "from worker.retrain import jobs\n"),
        ("worker.review.report", "from ..retrain.training import loop\n"),
    ],
)
def test_a_deliberate_violation_is_caught(module: str, source: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("worker.queue.tasks", "from worker.classify import runner\n"),
        ("worker.retrain.run", "from worker.review.views import Review\n"),
        (
            "worker.classify.pipeline",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from worker.queue.app import app\n",
        ),
        ("worker.cli.main", "import click\n"),
    ],
)
def test_allowed_imports_pass(module: str, source: str) -> None:
    assert violations(source, module) == []


def test_the_readme_architecture_table_matches_the_rule() -> None:
    text = README.read_text()
    assert text.count(START) == 1, f"README needs one {START}"
    assert text.count(END) == 1, f"README needs one {END}"
    table = text.split(START)[1].split(END)[0]
    assert table.strip() == markdown_table().strip(), (
        "README.md's layer table is out of date: replace it with the output of "
        "`.venv/bin/python -m worker.architecture --markdown`"
    )
