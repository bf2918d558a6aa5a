"""What every route of ``synthdetect serve`` shares: ``Services``, built once per process.

The engine is the one a queue worker builds (``InferenceEngine.from_settings``:
the same model provider, alias polling, dynamic batcher and execution plan), so
the invoke API and the console score exactly as workers do and share batches
between concurrent requests. Routes reach it with ``services_of(request)``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request

from contracts import ImageResult, ModelRef
from worker.classify.inputs import InputItem
from worker.imaging import ImageLimits
from worker.inference.registry import ModelRegistry
from worker.metrics import record_batch
from worker.serve.auth import LoginThrottle, SessionKeys
from worker.serve.db import ConsoleStore, open_store
from worker.serve.invoke import Invoker, fetch_client
from worker.settings import Settings
from worker.storage import Storage

if TYPE_CHECKING:  # torch loads when the app starts, not at import
    from worker.inference.engine import InferenceEngine

EngineFactory = Callable[[Settings, Storage], "InferenceEngine"]


def build_engine(settings: Settings, storage: Storage) -> InferenceEngine:
    """The worker's engine: same provider, batcher and execution plan as ``worker.queue.tasks``."""
    from worker.inference.engine import InferenceEngine

    return InferenceEngine.from_settings(settings, storage, on_batch=record_batch)


@dataclass
class Services:
    """What every route of the process shares; built once by the lifespan."""

    settings: Settings
    storage: Storage
    store: ConsoleStore
    registry: ModelRegistry
    session_keys: SessionKeys
    limits: ImageLimits
    engine: InferenceEngine
    fetch: httpx.Client
    """The client of invoke URI fetches (no redirects, bounded timeouts)."""
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    ready: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Room for console features to keep process-wide objects (e.g. running trainings)."""

    @property
    def default_model(self) -> ModelRef:
        return ModelRef(name=self.settings.default_model)

    @property
    def data_dir(self) -> Path:
        return self.settings.serve_data_dir

    def invoke(self, items: list[InputItem], model: ModelRef | None = None) -> list[ImageResult]:
        """Classify ``items`` as ``POST /v1/invoke`` does (blocking: call from a thread).

        Build items with ``worker.serve.invoke.bytes_item(name, data)``; raises
        ``InvokeError`` (``model_unavailable``) when the model cannot be loaded.
        """
        invoker = Invoker(self.engine, self.settings, self.storage, self.fetch)
        return invoker.run(items, model or self.default_model)

    def close(self) -> None:
        self.engine.close()
        self.fetch.close()
        self.store.close()


def open_console_store(settings: Settings) -> ConsoleStore:
    """The store ``SYNTHDETECT_SERVE_DATABASE_URL`` names (SQLite in the data dir if unset)."""
    url = settings.serve_database_url.get_secret_value() if settings.serve_database_url else ""
    return open_store(url, settings.serve_data_dir)


def build_services(
    settings: Settings,
    *,
    store: ConsoleStore | None = None,
    engine_factory: EngineFactory = build_engine,
) -> Services:
    """Open the store (schema created), the storage, the registry and the engine."""
    storage = Storage.from_settings(settings)
    store = store or open_console_store(settings)
    secret = (
        settings.serve_secret_key.get_secret_value()
        if settings.serve_secret_key
        else store.meta_value("session_secret", secrets.token_urlsafe(48))
    )
    return Services(
        settings=settings,
        storage=storage,
        store=store,
        registry=ModelRegistry.from_settings(settings, storage),
        session_keys=SessionKeys(
            secret=secret,
            max_age_s=settings.serve_session_hours * 3600,
            secure=settings.serve_secure_cookies,
        ),
        limits=ImageLimits.from_settings(settings),
        engine=engine_factory(settings, storage),
        fetch=fetch_client(settings),
    )


def services_of(request: Request) -> Services:
    """The process's ``Services`` (set by the lifespan before any request arrives)."""
    services = request.app.state.services
    assert isinstance(services, Services)
    return services
