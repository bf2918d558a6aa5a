"""The whole app on the machine's PostgreSQL: login, a console page and an invoke, with
users, sessions and keys in PostgreSQL (its own schema, dropped afterwards)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.unit.serve.test_db import POSTGRES_URL, postgres_or_skip
from worker.serve.app import create_app
from worker.serve.auth import create_api_key, hash_password
from worker.serve.db import ConsoleStore, open_store
from worker.settings import Settings

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).parents[2] / "data" / "cifake-sample"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConsoleStore]:
    postgres_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = open_store(POSTGRES_URL, tmp_path, schema=schema)
    try:
        yield store
    finally:
        store.close()
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_login_and_invoke_with_postgresql(store: ConsoleStore, tmp_path: Path) -> None:
    store.add_user("ann", hash_password("correct horse"))
    _, key = create_api_key(store, "pg", "tests")
    settings = Settings(serve_data_dir=tmp_path, device="cpu")
    with TestClient(create_app(settings, store=store)) as client:
        page = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        response = client.post(
            "/login",
            data={"username": "ann", "password": "correct horse", "csrf_token": token},
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert client.get("/", follow_redirects=False).status_code == 200
        image = next((SAMPLE / "real").glob("*.jpg")).read_bytes()
        answer = client.post(
            "/v1/invoke", content=image, headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200
        assert answer.json()["label"] in ("real", "synthetic")
    # the generated cookie key was kept in PostgreSQL for every replica to share
    assert store.meta_value("session_secret", "unused") != "unused"
