"""The ``synthdetect serve`` application: invoke API, console, and what they share.

``create_app`` returns a Starlette app whose lifespan builds one ``Services``
per process: the same ``InferenceEngine`` a queue worker builds (model provider
following the ``production`` alias, one shared dynamic batcher), so concurrent
requests share batches and a promotion reaches the API within
``SYNTHDETECT_ALIAS_POLL_S``; the storage, registry and console store the
console pages read. Routes find it at ``request.app.state.services``.

::

    /login, /logout           worker.serve.login      (public: /login, /static, probes)
    /v1/invoke[/batch]        worker.serve.api        (API key)
    /v1/openapi.json          worker.serve.api        (public: the published schema)
    everything else           worker.serve.console    (session + CSRF)
    /healthz, /readyz, /metrics

Every request passes ``AuthGate`` first (``worker.serve.auth``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from worker.logs import get_logger
from worker.serve import api, console, login
from worker.serve.auth import AuthGate, api_error
from worker.serve.db import ConsoleStore
from worker.serve.invoke import ApiErrorCode
from worker.serve.services import EngineFactory, Services, build_engine, build_services, services_of
from worker.settings import Settings

log = get_logger(__name__)

STATIC = Path(__file__).parent / "static"
REQUEST_THREADS = 256
"""Threads that run blocking request work at once (anyio's default is 40): an invoke waits
on the batcher in a thread, and 50 concurrent clients must not queue for threads."""


def create_app(
    settings: Settings,
    *,
    store: ConsoleStore | None = None,
    engine_factory: EngineFactory = build_engine,
    warm_up: bool = True,
) -> Starlette:
    """The ASGI app of ``synthdetect serve``; services are built when the app starts.

    ``store`` and ``engine_factory`` let tests and benchmarks pass their own;
    ``warm_up`` loads the default model before the app reports ready.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        services = await anyio.to_thread.run_sync(
            lambda: build_services(settings, store=store, engine_factory=engine_factory)
        )
        app.state.services = services
        try:
            if warm_up:
                await anyio.to_thread.run_sync(_warm_up, services)
            services.ready = True
            log.info("serve_ready", model=settings.default_model)
            yield
        finally:
            services.ready = False
            await anyio.to_thread.run_sync(services.close)  # finishes queued images first
            log.info("serve_stopped")

    routes: list[BaseRoute] = [
        Route("/healthz", _healthz),
        Route("/readyz", _readyz),
        Route("/metrics", _metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        *login.routes(),
        *api.routes(),
        *console.routes(),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(AuthGate)],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )


def _warm_up(services: Services) -> None:
    """Load the default model now, so the first request does not pay for it."""
    loaded = services.engine.model_for(services.default_model)
    log.info("serve_model_loaded", model=loaded.card.name, version=loaded.card.version)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method): the API's error body under /v1."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/v1/"):
        return PlainTextResponse(str(exc.detail), exc.status_code, headers=exc.headers)
    code = {
        404: ApiErrorCode.NO_SUCH_ENDPOINT,
        405: ApiErrorCode.METHOD_NOT_ALLOWED,
    }.get(exc.status_code)
    if code is None:
        return api_error(exc.status_code, "bad_request", str(exc.detail))
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return api_error(exc.status_code, code.value, message, headers=exc.headers)


async def _healthz(request: Request) -> Response:
    alive = services_of(request).engine.alive
    return JSONResponse({"status": "ok" if alive else "failing"}, 200 if alive else 503)


async def _readyz(request: Request) -> Response:
    services = services_of(request)
    ready = services.ready and services.engine.alive
    return JSONResponse({"status": "ok" if ready else "starting"}, 200 if ready else 503)


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
