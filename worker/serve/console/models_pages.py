"""*Models*: every version with its card; promote one to ``production``, or roll back.

Models listed are those with a ``production`` alias in any registry root plus
those the datasets train. Promoting and rolling back move the alias in the
console's registry (``SYNTHDETECT_MODEL_REGISTRY``); workers and this process
follow it within ``SYNTHDETECT_ALIAS_POLL_S``. A version's training report
(``report.html``, written by every retrain) is served from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from contracts import ModelCard, ModelId
from worker.errors import ModelError, StorageError
from worker.inference.registry import AliasRecord, ModelRegistry
from worker.review.views import REPORT_NAME
from worker.serve.console.state import Console, back_to, console_of
from worker.serve.datasets import DATASET_NAME, model_of
from worker.serve.pages import render
from worker.storage import join_uri


def routes() -> list[BaseRoute]:
    return [
        Route("/models", models_page, methods=["GET"]),
        Route("/models/{name}/promote", promote, methods=["POST"]),
        Route("/models/{name}/rollback", rollback, methods=["POST"]),
        Route("/models/{name}/{version}/report", report, methods=["GET"]),
    ]


@dataclass(frozen=True)
class ModelVersions:
    """One model: its alias now and before, and its versions' cards, newest first."""

    name: str
    alias: AliasRecord | None
    cards: list[ModelCard]
    unreadable: list[tuple[str, str]]
    reports: frozenset[str]
    """Versions that have a training report."""


def model_versions(console: Console) -> list[ModelVersions]:
    registry = console.services.registry
    names = set(registry.known_models()) | {model_of(v.dataset) for v in console.datasets.views()}
    names.add(console.services.settings.default_model)
    found = []
    for name in sorted(names):
        cards, unreadable = [], []
        for version in reversed(registry.list_versions(name)):
            try:
                cards.append(registry.read_card(ModelId(name=name, version=version)))
            except (ModelError, StorageError, ValueError) as exc:
                unreadable.append((version, str(exc)))
        if cards or unreadable:
            reports = frozenset(c.version for c in cards if _report_uri(registry, c) is not None)
            found.append(ModelVersions(name, registry.read_alias(name), cards, unreadable, reports))
    return found


async def models_page(request: Request) -> Response:
    console = console_of(request)
    models = await anyio.to_thread.run_sync(model_versions, console)
    return render(
        request,
        "console/models.html",
        {
            "models": models,
            "registry": console.services.registry.primary_root,
            "poll_s": console.services.settings.alias_poll_s,
            "msg": request.query_params.get("msg"),
            "err": request.query_params.get("err"),
        },
    )


def _registry(console: Console, name: str) -> ModelRegistry:
    if not DATASET_NAME.match(name):
        raise HTTPException(404, f"no model {name!r}")
    console.writable_registry()
    return console.services.registry


async def promote(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["name"]
    async with request.form() as form:
        version = str(form.get("version", ""))
    try:
        registry = _registry(console, name)
        record = await anyio.to_thread.run_sync(
            registry.promote, ModelId(name=name, version=version)
        )
    except (ModelError, StorageError, ValueError) as exc:
        return back_to("/models", error=f"not promoted: {exc}")
    return back_to("/models", f"{name}@{record.version} is production now")


async def rollback(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["name"]
    try:
        registry = _registry(console, name)
        record = await anyio.to_thread.run_sync(registry.rollback, name)
    except (ModelError, StorageError) as exc:
        return back_to("/models", error=f"not rolled back: {exc}")
    return back_to("/models", f"{name} rolled back: production is {record.version} again")


async def report(request: Request) -> Response:
    console = console_of(request)
    name, version = request.path_params["name"], request.path_params["version"]
    registry = console.services.registry

    def read() -> bytes:
        card = registry.read_card(ModelId(name=name, version=version))  # refuses unknown ones
        uri = _report_uri(registry, card)
        if uri is None:
            raise ModelError(f"{name}@{version} has no training report")
        return registry.storage.get_bytes(uri)

    try:
        html = await anyio.to_thread.run_sync(read)
    except (ModelError, StorageError, ValueError) as exc:
        raise HTTPException(404, str(exc)) from exc
    # The report is self-contained HTML written by our own renderer; keep it from scripting.
    return HTMLResponse(html, headers={"Content-Security-Policy": "script-src 'none'"})


def _report_uri(registry: ModelRegistry, card: ModelCard) -> str | None:
    """Where the version's ``report.html`` is, in the first root that has the version."""
    model = ModelId(name=card.name, version=card.version)
    for root in registry.roots:
        if registry.storage.exists(join_uri(registry.version_uri(root, model), "card.json")):
            uri = join_uri(registry.version_uri(root, model), REPORT_NAME)
            return uri if registry.storage.exists(uri) else None
    return None
