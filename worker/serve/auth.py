"""Who is asking: console sessions, CSRF tokens, API keys, and the gate in front of every route.

- **Passwords** are hashed with argon2id (``argon2-cffi``'s defaults, RFC 9106's
  low-memory profile); users are created with ``synthdetect users add``. Five failed
  logins in five minutes for one name or from one address pause further attempts.
- **Sessions**: a login creates a random 256-bit token; the cookie carries it signed
  (``itsdangerous``, key ``SYNTHDETECT_SERVE_SECRET_KEY`` or one generated into the
  database) and the database keeps only its sha256, so logout and ``users remove``
  end a session at once and a leaked database holds no usable token. The cookie is
  ``HttpOnly``, ``SameSite=Lax`` and ``Secure`` when configured.
- **CSRF**: every unsafe request (POST, PUT, PATCH, DELETE) to a console route must
  carry the session's token: the ``X-CSRF-Token`` header (JavaScript), a
  ``csrf_token`` form field (urlencoded forms), or for multipart forms the
  header or a ``csrf_token`` query parameter (a multipart body is not parsed twice).
  The token is an HMAC of the session token, so it needs no storage. Before login
  the token is double-submit: a random value in its own cookie.
- **API keys** look like ``sdk_<id>_<secret>``; the database keeps the id and the
  secret's sha256 (a 256-bit random secret needs no slow hash). They are shown once.

``AuthGate`` is ASGI middleware in front of every route, so no page or API route
can forget to check: ``/v1/*`` needs a valid API key (else 401 JSON), every other
path but the public ones needs a session (else a redirect to ``/login``, or 401
for a non-GET), and unsafe console requests need the CSRF token (else 403).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.serve.db import ApiKey, ConsoleStore, User

SESSION_COOKIE = "synthdetect_session"
LOGIN_CSRF_COOKIE = "synthdetect_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
KEY_PREFIX = "sdk_"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC_PATHS = frozenset(
    {"/login", "/healthz", "/readyz", "/metrics", "/favicon.ico", "/v1/openapi.json"}
)
PUBLIC_PREFIXES = ("/static/",)
MAX_FORM_BYTES = 1024 * 1024
"""An urlencoded console form larger than this is refused (they carry a few fields)."""

_hasher = PasswordHasher()


# --- passwords ------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    return _hasher.hash(password)


def verify_password(user: User, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(user: User) -> bool:
    return _hasher.check_needs_rehash(user.password_hash)


_DUMMY_HASH = _hasher.hash("not a password of anyone")


def authenticate(store: ConsoleStore, username: str, password: str) -> User | None:
    """The user whose password this is; unknown names cost the same time as wrong passwords."""
    user = store.user_by_name(username)
    if user is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        return None
    if not verify_password(user, password):
        return None
    if needs_rehash(user):
        store.set_password_hash(user.id, _hasher.hash(password))
    return user


class LoginThrottle:
    """Slows password guessing: after ``max_failures`` failed logins within ``window_s`` for
    one user name (or from one client address), further attempts are refused until the
    oldest failure leaves the window. Kept in memory: each replica counts its own."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, *keys: str) -> float:
        """Seconds until ``keys`` may try again (0: now)."""
        now = time.monotonic()
        longest = 0.0
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < self.window_s]
                self._failures[key] = recent
                if len(recent) >= self.max_failures:
                    longest = max(longest, recent[0] + self.window_s - now)
        return longest

    def failed(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(time.monotonic())

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


# --- API keys -------------------------------------------------------------------------------


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def create_api_key(store: ConsoleStore, name: str, created_by: str) -> tuple[ApiKey, str]:
    """A new key's record and the full key, which the caller shows once."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = store.add_api_key(key_id, name, _sha256(secret), created_by)
    return record, f"{KEY_PREFIX}{key_id}_{secret}"


def check_api_key(store: ConsoleStore, token: str) -> ApiKey | None:
    """The active key ``token`` is, or None (malformed, unknown, wrong secret, revoked)."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    record = store.api_key(key_id)
    if record is None or not record.active:
        return None
    if not hmac.compare_digest(record.secret_hash, _sha256(secret)):
        return None
    return record


def bearer_token(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# --- sessions and CSRF ----------------------------------------------------------------------


@dataclass(frozen=True)
class SessionKeys:
    """The process's cookie signer and CSRF key, from one secret."""

    secret: str
    max_age_s: float
    secure: bool

    @property
    def signer(self) -> URLSafeSerializer:
        return URLSafeSerializer(self.secret, salt="synthdetect-session")

    def csrf_for(self, session_token: str) -> str:
        return hmac.new(
            self.secret.encode(), b"csrf:" + session_token.encode(), "sha256"
        ).hexdigest()

    def session_token(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            value = self.signer.loads(cookie)
        except BadSignature:
            return None
        return value if isinstance(value, str) else None


def start_session(store: ConsoleStore, keys: SessionKeys, user: User, response: Response) -> str:
    """Create a session for ``user`` and set its cookie on ``response``; its token."""
    token = secrets.token_urlsafe(32)
    store.add_session(_sha256(token), user.id, time.time() + keys.max_age_s)
    response.set_cookie(
        SESSION_COOKIE,
        keys.signer.dumps(token),
        max_age=int(keys.max_age_s),
        httponly=True,
        samesite="lax",
        secure=keys.secure,
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return token


def end_session(
    store: ConsoleStore, keys: SessionKeys, request: Request, response: Response
) -> None:
    token = keys.session_token(request.cookies.get(SESSION_COOKIE))
    if token is not None:
        store.remove_session(_sha256(token))
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


def csrf_token(request: Request) -> str:
    """The token every console form and unsafe fetch must carry (render it into forms)."""
    state = request.scope.setdefault("state", {})
    token = state.get("csrf_token")
    if isinstance(token, str):
        return token
    token = secrets.token_urlsafe(24)  # login page: double-submit, set as a cookie below
    state["csrf_token"] = token
    state["set_login_csrf"] = token
    return token


def remember_login_csrf(request: Request, response: Response) -> None:
    """Set the double-submit cookie if ``csrf_token`` minted one for this response."""
    token = request.scope.get("state", {}).get("set_login_csrf")
    if token:
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            path="/",
        )


def _secure(request: Request) -> bool:
    keys = request.scope.get("state", {}).get("session_keys")
    return bool(keys and keys.secure)


def current_user(request: Request) -> User:
    """The logged-in user of a console request (the gate let only those through)."""
    user = request.scope.get("state", {}).get("user")
    if not isinstance(user, User):
        raise RuntimeError("current_user called on a request the gate did not authenticate")
    return user


def current_api_key(request: Request) -> ApiKey:
    key = request.scope.get("state", {}).get("api_key")
    if not isinstance(key, ApiKey):
        raise RuntimeError("current_api_key called on a request the gate did not authenticate")
    return key


# --- the gate -------------------------------------------------------------------------------


def api_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The API's error body: ``{"error": {"code": ..., "message": ...}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AuthGate:
    """Refuses every request that is not authenticated, before any route sees it.

    Reads the store and session keys from ``scope["app"].state.services``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services: Any = scope["app"].state.services
        store: ConsoleStore = services.store
        keys: SessionKeys = services.session_keys
        state = scope.setdefault("state", {})
        state["session_keys"] = keys
        request = Request(scope)
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/v1/") and not is_public(path):
            token = bearer_token(request.headers)
            key = check_api_key(store, token) if token else None
            if key is None:
                response = api_error(
                    401,
                    "unauthenticated",
                    "send an API key as 'Authorization: Bearer sdk_...' "
                    "(create one with `synthdetect apikeys create`)"
                    if token is None
                    else "the API key is unknown, malformed or revoked",
                    headers={"www-authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
            state["api_key"] = key
            await self.app(scope, receive, send)
            return
        session = keys.session_token(request.cookies.get(SESSION_COOKIE))
        user = store.session_user(_sha256(session), time.time()) if session else None
        if user is not None and session is not None:
            state["user"] = user
            state["csrf_token"] = keys.csrf_for(session)
        if user is None and not is_public(path):
            await _refuse_anonymous(request, scope, receive, send)
            return
        if method in UNSAFE_METHODS:
            expected = state.get("csrf_token") or request.cookies.get(LOGIN_CSRF_COOKIE)
            receive, given = await _csrf_from_request(request, receive)
            if not expected or not given or not hmac.compare_digest(str(expected), given):
                await _forbidden(request)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _refuse_anonymous(request: Request, scope: Scope, receive: Receive, send: Send) -> None:
    response: Response
    if request.method == "GET" and "application/json" not in request.headers.get("accept", ""):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
    else:
        response = api_error(401, "unauthenticated", "log in to the console first")
    await response(scope, receive, send)


def _forbidden(request: Request) -> Response:
    return api_error(
        403,
        "csrf_failed",
        "the form's CSRF token is missing or stale; reload the page and try again",
    )


async def _csrf_from_request(request: Request, receive: Receive) -> tuple[Receive, str | None]:
    """The CSRF token an unsafe request carries, and a ``receive`` that replays any body read."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return receive, header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return receive, _first(parse_qs(request.url.query).get(CSRF_FIELD))
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return receive, None
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return receive, None
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_FORM_BYTES:
            return receive, None
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await receive()

    fields = parse_qs(body.decode("latin-1"))
    return replay, _first(fields.get(CSRF_FIELD))


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None
