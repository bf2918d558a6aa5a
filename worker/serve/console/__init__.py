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
  extend ``base.html`` (the console's are in ``templates/console/``); static files
  go in ``worker/serve/static`` (no CDN).
- Shared objects: ``worker.serve.services.services_of(request)`` (settings, storage,
  store, registry, engine, limits, ``extra`` for process-wide state); the console's
  own (datasets, predictions, training runs) through ``console.state.console_of``.

The pages follow the workflow: Invoke, Datasets, Label, Train, Review, Models.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from worker.serve.console import (
    datasets_pages,
    home,
    invoke_page,
    label_pages,
    models_pages,
    review_page,
    train_pages,
)
from worker.serve.pages import NAV

PAGES = [
    ("/invoke", "Invoke"),
    ("/datasets", "Datasets"),
    ("/label", "Label"),
    ("/train", "Train"),
    ("/review", "Review"),
    ("/models", "Models"),
]


def routes() -> list[BaseRoute]:
    """Every console page, and their entries in the menu."""
    for entry in PAGES:
        if entry not in NAV:
            NAV.append(entry)
    return [
        *home.routes(),
        *invoke_page.routes(),
        *datasets_pages.routes(),
        *label_pages.routes(),
        *train_pages.routes(),
        *review_page.routes(),
        *models_pages.routes(),
    ]
