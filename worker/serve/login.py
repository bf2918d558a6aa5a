"""``/login`` and ``/logout``: the console's only public page and its way out."""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from worker.logs import get_logger
from worker.serve.auth import authenticate, end_session, start_session
from worker.serve.pages import render
from worker.serve.services import services_of

log = get_logger(__name__)


def routes() -> list[BaseRoute]:
    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def site_path(target: str) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirects).

    Browsers read ``/\\host`` as ``//host``, so backslashes and control characters
    are refused along with schemes and ``//``.
    """
    if not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return None
    parts = urlsplit(target)
    return None if parts.scheme or parts.netloc else target


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site only, else the home page."""
    return (site_path(target) if target else None) or "/"


async def login_page(request: Request) -> Response:
    return render(request, "login.html", {"next": safe_next(request.query_params.get("next"))})


async def login_submit(request: Request) -> Response:

    services = services_of(request)
    form = await request.form()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    target = safe_next(str(form.get("next", "")) or None)
    keys = (f"user:{username.lower()}", f"client:{request.client.host if request.client else '-'}")
    wait_s = services.login_throttle.wait_s(*keys)
    if wait_s > 0:
        log.warning("console_login_throttled", username=username)
        message = f"Too many failed logins. Try again in {int(wait_s) + 1} seconds."
        return render(
            request,
            "login.html",
            {"next": target, "error": message, "username": username},
            status_code=429,
        )
    # argon2 takes tens of ms on purpose: off the event loop.
    user = await anyio.to_thread.run_sync(authenticate, services.store, username, password)
    if user is None:
        services.login_throttle.failed(*keys)
        log.info("console_login_failed", username=username)
        return render(
            request,
            "login.html",
            {"next": target, "error": "Unknown user name or wrong password.", "username": username},
            status_code=401,
        )
    services.login_throttle.succeeded(keys[0])
    response = RedirectResponse(target, status_code=303)
    start_session(services.store, services.session_keys, user, response)
    log.info("console_login", username=user.username)
    return response


async def logout(request: Request) -> Response:

    services = services_of(request)
    response = RedirectResponse("/login", status_code=303)
    end_session(services.store, services.session_keys, request, response)
    return response
