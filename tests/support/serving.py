"""``synthdetect serve`` for tests: an app on a temporary SQLite store, with a user and an
API key, driven by Starlette's TestClient (the real app, lifespan and engine), or a real
uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from tests.support.waiting import wait_until
from worker.serve.app import create_app
from worker.serve.auth import create_api_key, hash_password
from worker.serve.db import ConsoleStore
from worker.serve.services import open_console_store
from worker.settings import Settings

USER = "ann"
PASSWORD = "correct horse battery"


@dataclass
class Served:
    """A serve app's settings, store, the test user and an API key."""

    settings: Settings
    store: ConsoleStore
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def prepare(data_dir: Path, **overrides: Any) -> Served:
    """Settings on ``data_dir`` (CPU), a store with user ``ann`` and one API key."""
    settings = Settings(serve_data_dir=data_dir, device="cpu", **overrides)
    store = open_console_store(settings)
    store.add_user(USER, hash_password(PASSWORD))
    _, key = create_api_key(store, "tests", "tests")
    return Served(settings, store, key)


def app_for(served: Served) -> Starlette:
    return create_app(served.settings, store=served.store)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port (in a thread); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started, 60, "uvicorn started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
