"""The layer rule of the code base: which package may import which.

Each layer may import from the layers before it and from itself, never from a
later one. ``tests/unit/test_layers.py`` checks every import in ``worker/`` and
``contracts/`` against this list (module-level and function-level imports
alike) and checks the README's architecture table against ``markdown_table``
(``python -m worker.architecture --markdown`` regenerates it).

Beside the order, ``CLASSIFY_WORKER_NEVER_IMPORTS`` names what a classify
worker process must not load at start-up (training code, plotting, the HTML
report): they cost start-up time and memory and belong to retrain workers and
the commands that train or review.
"""

from __future__ import annotations

import sys

LAYERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("wire format", ("contracts",), "pydantic models and JSON Schemas; producers import it alone"),
    (
        "foundation",
        (
            "worker.settings",
            "worker.errors",
            "worker.logs",
            "worker.metrics",
            "worker.lifecycle",
            "worker.health",
        ),
        "every knob, error hierarchy, structured logs, metrics, shutdown state, health endpoints",
    ),
    (
        "storage",
        ("worker.storage", "worker.objectreader"),
        "S3 and local folders behind one interface; fast S3 GETs",
    ),
    (
        "imaging",
        ("worker.imaging", "worker.provenance"),
        "safe decode and preprocessing; provenance metadata (C2PA, XMP, generator tags)",
    ),
    ("webhooks", ("worker.webhooks",), "signing, SSRF guard, retry policy, delivery records"),
    ("inference", ("worker.inference",), "model loading, registry, provider, dynamic batcher"),
    (
        "classify",
        ("worker.classify",),
        "inputs, pipeline (fetch, decode, batch, score), results, sharding, job runner",
    ),
    ("review", ("worker.review",), "review views, HTML report and plots, evaluation metrics"),
    ("retrain", ("worker.retrain",), "a retrain run, retrain jobs, training/"),
    ("queue", ("worker.queue",), "Celery app and topology, tasks, ingest, dead letters, producer"),
    (
        "serve",
        ("worker.serve",),
        "`synthdetect serve`: invoke API, web console, auth, console database",
    ),
    ("cli", ("worker.cli",), "the `synthdetect` command, one module per command group"),
)
"""(layer, packages or modules in it, what it holds), lowest first."""

CLASSIFY_WORKER_NEVER_IMPORTS = (
    "worker.retrain.run",
    "worker.retrain.jobs",
    "worker.retrain.training",
    "worker.review",
    "matplotlib",
)
"""Module prefixes that a worker consuming only classify queues never imports."""


def layer_of(module: str) -> int | None:
    """Index of the layer that holds ``module`` (None for third-party modules)."""
    for index, (_, members, _) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    return None


def markdown_table() -> str:
    """The README's architecture table, lowest layer first."""
    rows = ["| layer | modules | holds |", "| --- | --- | --- |"]
    for name, members, holds in LAYERS:
        modules = ", ".join(f"`{m.replace('.', '/')}`" for m in members)
        rows.append(f"| {name} | {modules} | {holds} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m worker.architecture --markdown")
    print(markdown_table())
