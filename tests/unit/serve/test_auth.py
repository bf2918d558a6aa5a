"""The gate in front of every route: console sessions, CSRF, the login page, API keys."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.support.serving import PASSWORD, USER, Served, prepare
from tests.support.waiting import wait_until
from worker.serve import console
from worker.serve.app import create_app
from worker.serve.auth import (
    SESSION_COOKIE,
    LoginThrottle,
    authenticate,
    check_api_key,
    create_api_key,
    current_user,
    hash_password,
)
from worker.serve.login import safe_next


async def echo(request: Request) -> Response:
    """A console route for the tests: says who asked and what the form held."""
    form = await request.form()
    return JSONResponse({"user": current_user(request).username, "fields": sorted(form.keys())})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return prepare(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    original = console.routes
    console.routes = lambda: [*original(), Route("/echo", echo, methods=["GET", "POST"])]  # type: ignore[assignment]
    try:
        app = create_app(served.settings, store=served.store)
    finally:
        console.routes = original  # type: ignore[assignment]
    with TestClient(app) as client:
        yield client


def csrf_in(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def log_in(client: TestClient, password: str = PASSWORD, next_path: str = "/") -> Response:
    token = csrf_in(client.get("/login").text)
    return client.post(  # type: ignore[return-value]
        "/login",
        data={"username": USER, "password": password, "csrf_token": token, "next": next_path},
        follow_redirects=False,
    )


@pytest.fixture
def logged_in(client: TestClient) -> Iterator[TestClient]:
    client.cookies.clear()
    assert log_in(client).status_code == 303
    yield client
    client.cookies.clear()


def test_pages_redirect_anonymous_visitors_to_login(client: TestClient) -> None:
    client.cookies.clear()
    response = client.get("/echo?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/echo%3Fx%3D1"
    assert client.post("/echo", data={"a": "1"}).status_code == 401
    assert client.get("/echo", headers={"accept": "application/json"}).status_code == 401


def test_public_paths_need_no_login(client: TestClient) -> None:
    client.cookies.clear()
    for path in ("/login", "/healthz", "/readyz", "/metrics", "/static/console.css"):
        assert client.get(path).status_code == 200, path


def test_login_sets_a_hardened_cookie_and_lands_on_next(client: TestClient) -> None:
    client.cookies.clear()
    response = log_in(client, next_path="/echo")
    assert response.status_code == 303
    assert response.headers["location"] == "/echo"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # not configured here; see the next test
    assert client.get("/echo").json()["user"] == USER


def test_secure_cookies_when_configured(tmp_path_factory: pytest.TempPathFactory) -> None:
    served = prepare(tmp_path_factory.mktemp("secure"), serve_secure_cookies=True)
    app = create_app(served.settings, store=served.store)
    with TestClient(app, base_url="https://testserver") as client:  # Secure cookies need TLS
        response = log_in(client)
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)
    )
    assert "Secure" in cookie


def test_a_wrong_password_or_unknown_user_is_refused(client: TestClient) -> None:
    client.cookies.clear()
    response = log_in(client, password="wrong password")
    assert response.status_code == 401
    assert "wrong password" in response.text
    assert SESSION_COOKIE not in client.cookies


def test_login_itself_needs_its_csrf_token(client: TestClient) -> None:
    client.cookies.clear()
    client.get("/login")
    response = client.post(
        "/login", data={"username": USER, "password": PASSWORD, "csrf_token": "forged"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


def test_unsafe_console_requests_need_the_session_csrf_token(logged_in: TestClient) -> None:
    page = logged_in.get("/")
    token = csrf_in(page.text)
    assert logged_in.post("/echo", data={"a": "1"}).status_code == 403
    assert logged_in.post("/echo", data={"a": "1", "csrf_token": "x" * 64}).status_code == 403
    ok = logged_in.post("/echo", data={"a": "1", "csrf_token": token})
    assert ok.status_code == 200
    assert ok.json() == {"user": USER, "fields": ["a", "csrf_token"]}  # the body was replayed
    assert logged_in.post("/echo", headers={"x-csrf-token": token}).status_code == 200
    files = {"f": ("a.txt", b"hello")}
    assert logged_in.post("/echo", files=files).status_code == 403
    assert logged_in.post(f"/echo?csrf_token={token}", files=files).status_code == 200
    assert logged_in.post("/echo", files=files, headers={"x-csrf-token": token}).json()[
        "fields"
    ] == ["f"]


def test_logout_ends_the_session_on_the_server(logged_in: TestClient) -> None:
    token = csrf_in(logged_in.get("/").text)
    stolen = logged_in.cookies.get(SESSION_COOKIE)
    response = logged_in.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    logged_in.cookies.set(SESSION_COOKIE, stolen or "")  # a copy of the cookie is dead too
    assert logged_in.get("/", follow_redirects=False).status_code == 303


def test_a_tampered_cookie_is_no_session(logged_in: TestClient) -> None:
    cookie = logged_in.cookies.get(SESSION_COOKIE) or ""
    logged_in.cookies.set(SESSION_COOKIE, cookie[:-2] + "xx")
    assert logged_in.get("/", follow_redirects=False).status_code == 303


def test_removing_a_user_ends_their_sessions(logged_in: TestClient, served: Served) -> None:
    assert logged_in.get("/", follow_redirects=False).status_code == 200
    assert served.store.remove_user(USER)
    try:
        assert logged_in.get("/", follow_redirects=False).status_code == 303
    finally:
        served.store.add_user(USER, hash_password(PASSWORD))


def test_a_session_cookie_does_not_open_the_api(logged_in: TestClient) -> None:
    response = logged_in.post("/v1/invoke", content=b"x")
    assert response.status_code == 401


def test_next_is_never_an_open_redirect() -> None:
    assert safe_next("/datasets?x=1") == "/datasets?x=1"
    for bad in (
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example/x",
        "/\tevil",
        "javascript:alert(1)",
        "",
        None,
    ):
        assert safe_next(bad) == "/"


def test_passwords_are_argon2_and_checked(served: Served) -> None:
    user = served.store.user_by_name(USER)
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert authenticate(served.store, USER, PASSWORD) is not None
    assert authenticate(served.store, USER, "nope") is None
    assert authenticate(served.store, "nobody", PASSWORD) is None
    with pytest.raises(ValueError, match="8 characters"):
        hash_password("short")


def test_api_keys_are_stored_hashed(served: Served) -> None:
    record, key = create_api_key(served.store, "k", "tests")
    assert key.startswith(f"sdk_{record.id}_")
    secret = key.split("_", 2)[2]
    assert secret not in record.secret_hash
    assert check_api_key(served.store, key) == record
    assert check_api_key(served.store, key + "x") is None
    assert check_api_key(served.store, f"sdk_{record.id}") is None


def test_password_guessing_is_throttled(tmp_path_factory: pytest.TempPathFactory) -> None:
    served = prepare(tmp_path_factory.mktemp("throttle"))
    with TestClient(create_app(served.settings, store=served.store)) as client:
        for _ in range(5):
            assert log_in(client, password="guess guess").status_code == 401
        refused = log_in(client)  # even the right password waits now
        assert refused.status_code == 429
        assert "Too many failed logins" in refused.text
        assert SESSION_COOKIE not in client.cookies


def test_the_throttle_forgets_old_failures() -> None:
    throttle = LoginThrottle(max_failures=2, window_s=0.2)
    throttle.failed("user:ann")
    assert throttle.wait_s("user:ann") == 0
    throttle.failed("user:ann")
    assert 0 < throttle.wait_s("user:ann", "client:x") <= 0.2
    assert throttle.wait_s("user:bob") == 0
    wait_until(lambda: throttle.wait_s("user:ann") == 0, 5, "the failures leave the window")
    throttle.failed("user:ann")
    throttle.failed("user:ann")
    throttle.succeeded("user:ann")
    assert throttle.wait_s("user:ann") == 0
