"""The console's first page: the workflow in order, with where each dataset stands."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contracts import ModelRef
from worker.errors import ModelError, StorageError
from worker.serve.console.state import console_of
from worker.serve.pages import render


def routes() -> list[BaseRoute]:
    return [Route("/", home, methods=["GET"])]


async def home(request: Request) -> Response:
    console = console_of(request)
    name = console.services.settings.default_model
    try:
        production = console.services.registry.resolve(ModelRef(name=name))
    except (ModelError, StorageError):
        production = None
    return render(
        request,
        "console/home.html",
        {
            "datasets": console.datasets.views(),
            "production": production,
            "running": console.runs.running(),
        },
    )
