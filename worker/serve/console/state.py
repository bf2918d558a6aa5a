"""The console's process-wide objects, built once on first use and kept in ``Services.extra``.

Pages reach them with ``console_of(request)``: the datasets (metadata in the
console database, images under ``SYNTHDETECT_SERVE_DATASETS_URI``), the
predictions kept per model version, and the training runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse

from worker.errors import ModelError
from worker.serve.auth import current_user
from worker.serve.datasets import DatasetStore
from worker.serve.login import site_path
from worker.serve.predictions import DatasetPredictions
from worker.serve.services import Services, services_of
from worker.serve.training_runs import TrainingRuns
from worker.settings import BUNDLED_MODELS

_KEY = "console"
_lock = threading.Lock()


@dataclass
class Console:
    """What the console's pages share."""

    services: Services
    datasets: DatasetStore
    predictions: DatasetPredictions
    runs: TrainingRuns

    def writable_registry(self) -> None:
        """Refuse to publish or move aliases inside the package's bundled models."""
        if self.services.registry.primary_root == str(BUNDLED_MODELS):
            raise ModelError(
                "no registry to write to: set SYNTHDETECT_MODEL_REGISTRY to a folder or "
                "s3:// prefix (scripts/console.sh uses <data dir>/models)"
            )


def console_of(request: Request) -> Console:
    """The process's ``Console``, built on first use."""
    services = services_of(request)
    console = services.extra.get(_KEY)
    if console is None:
        with _lock:
            console = services.extra.get(_KEY)
            if console is None:
                console = _build(services)
                services.extra[_KEY] = console
    assert isinstance(console, Console)
    return console


def _build(services: Services) -> Console:
    settings = services.settings
    data_dir = str(services.data_dir.absolute())
    root = settings.serve_datasets_uri or f"{data_dir}/datasets"
    datasets = DatasetStore(services.store, services.storage, root, services.limits)
    predictions = DatasetPredictions(
        services.engine, settings, services.storage, services.limits, services.store
    )
    runs = TrainingRuns(
        settings,
        services.store,
        services.storage,
        services.registry,
        datasets,
        f"{data_dir}/runs",
    )
    return Console(services, datasets, predictions, runs)


def local_path(target: str) -> str | None:
    """``target`` if it is a path on this site, else None (``login.site_path``)."""
    return site_path(target)


def username(request: Request) -> str:
    return current_user(request).username


def back_to(
    path: str, message: str | None = None, error: str | None = None, **query: Any
) -> RedirectResponse:
    """A 303 redirect to ``path`` carrying a one-line message (``?msg=`` / ``?err=``)."""
    params = {k: v for k, v in query.items() if v not in (None, "")}
    if message:
        params["msg"] = message
    if error:
        params["err"] = error
    target = path + ("?" + urlencode(params, doseq=True) if params else "")
    return RedirectResponse(target, status_code=303)
