"""The web console's pages: the mount point ``worker.serve.app`` includes.

Contract for console pages (``worker/serve/console/<page>.py``):

- ``routes()`` returns every console route; ``create_app`` mounts them after the
  API and login routes. Pages append ``(path, title)`` to ``worker.serve.pages.NAV``
  to appear in the menu.
- Every route here is behind ``AuthGate``: a request reaches it only with a valid
  session (``worker.serve.auth.current_user(request)``), and an unsafe method only
  with the CSRF token (form field ``csrf_token``, header ``X-CSRF-Token``, or for
  multipart forms the header or a ``csrf_token`` query parameter).
- Render with ``worker.serve.pages.render(request, "page.html", {...})``; templates
  extend ``base.html``; static files go in ``worker/serve/static`` (no CDN).
- Shared objects: ``worker.serve.services.services_of(request)`` (settings, storage,
  store, registry, engine, limits, ``extra`` for process-wide state).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from worker.serve.pages import render
from worker.serve.services import services_of


def routes() -> list[BaseRoute]:
    """Every console page (the home page until the console's pages arrive)."""
    return [Route("/", home, methods=["GET"])]


async def home(request: Request) -> Response:
    services = services_of(request)
    return render(request, "home.html", {"model": services.settings.default_model})
