"""Server-rendered pages: one Jinja2 environment, and ``render`` that every page uses.

``render`` puts what every template needs into its context: ``user`` (None on
the login page), ``csrf_token`` (render it into every form as
``<input type="hidden" name="csrf_token" value="{{ csrf_token }}">`` or send it
as the ``X-CSRF-Token`` header from JavaScript) and ``nav`` (the console's menu).
Templates live in ``worker/serve/templates``; they extend ``base.html``.
Everything a page loads is served from ``/static`` (no CDN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from worker.serve.auth import csrf_token, remember_login_csrf

TEMPLATES = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES))

NAV: list[tuple[str, str]] = []
"""(path, title) of the console's menu; ``worker.serve.console`` appends its pages."""


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    """The page ``template`` with ``context`` plus ``user``, ``csrf_token`` and ``nav``."""
    state = request.scope.get("state", {})
    full = {"user": state.get("user"), "csrf_token": csrf_token(request), "nav": NAV}
    full.update(context or {})
    response = templates.TemplateResponse(request, template, full, status_code=status_code)
    remember_login_csrf(request, response)
    return response
