"""The console store: the same behaviour on SQLite and on the machine's PostgreSQL.

PostgreSQL tests use ``SYNTHDETECT_TEST_POSTGRES_URL``-free defaults: 127.0.0.1:5432,
database ``test``, trust auth; each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.serve.db import (
    ConsoleStore,
    NewItem,
    PostgresStore,
    SqliteStore,
    StoreError,
    open_store,
)

POSTGRES_URL = "postgresql://127.0.0.1:5432/test"


def postgres_or_skip() -> None:
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConsoleStore]:
    if request.param == "sqlite":
        store: ConsoleStore = open_store("", tmp_path)
        yield store
        store.close()
        return
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


def test_users_are_unique_and_removable(store: ConsoleStore) -> None:
    ann = store.add_user("ann", "hash-a")
    store.add_user("bob", "hash-b")
    with pytest.raises(StoreError, match="already exists"):
        store.add_user("ann", "other")
    assert store.user_by_name("ann") == ann
    assert store.user_by_id(ann.id) == ann
    assert [u.username for u in store.list_users()] == ["ann", "bob"]
    store.set_password_hash(ann.id, "hash-2")
    assert store.user_by_name("ann").password_hash == "hash-2"  # type: ignore[union-attr]
    assert store.remove_user("ann")
    assert not store.remove_user("ann")
    assert store.user_by_name("ann") is None


def test_sessions_expire_and_end_with_their_user(store: ConsoleStore) -> None:
    ann = store.add_user("ann", "h")
    now = time.time()
    store.add_session("live", ann.id, now + 60)
    store.add_session("stale", ann.id, now - 1)
    assert store.session_user("live", now) == ann
    assert store.session_user("stale", now) is None
    assert store.session_user("unknown", now) is None
    assert store.purge_sessions(now) == 1
    store.remove_session("live")
    assert store.session_user("live", now) is None
    store.add_session("again", ann.id, now + 60)
    store.remove_user("ann")
    assert store.session_user("again", now) is None


def test_api_keys_revoke_once(store: ConsoleStore) -> None:
    key = store.add_api_key("abc123", "ci", "hashhash", "cli")
    assert key.active
    assert store.api_key("abc123") == key
    with pytest.raises(StoreError):
        store.add_api_key("abc123", "dup", "x", "cli")
    assert store.revoke_api_key("abc123")
    assert not store.revoke_api_key("abc123")
    assert not store.revoke_api_key("nope")
    revoked = store.api_key("abc123")
    assert revoked is not None
    assert not revoked.active
    assert [k.id for k in store.list_api_keys()] == ["abc123"]


def test_runs_keep_params_progress_and_result(store: ConsoleStore) -> None:
    first = store.add_run("retrain", "ann", {"budget_s": 60})
    second = store.add_run("invoke", "api", {})
    store.update_run(first.id, status="running", progress={"trial": 3, "of": 8})
    store.update_run(first.id, status="succeeded", result={"accuracy": 0.91})
    run = store.run(first.id)
    assert run is not None
    assert run.status == "succeeded"
    assert run.params == {"budget_s": 60}
    assert run.progress == {"trial": 3, "of": 8}
    assert run.result == {"accuracy": 0.91}
    assert run.updated_at >= run.created_at
    assert [r.id for r in store.list_runs()] == [second.id, first.id]
    assert [r.id for r in store.list_runs(kind="retrain")] == [first.id]
    with pytest.raises(StoreError, match="no run"):
        store.update_run("missing", status="x")


def test_datasets_and_their_items(store: ConsoleStore) -> None:
    cats = store.add_dataset("cats", "/data/cats", "ann", {"labels": ["real", "synthetic"]})
    with pytest.raises(StoreError):
        store.add_dataset("cats", "/elsewhere", "bob")
    assert store.dataset(cats.id) == cats
    added = store.add_items(
        cats.id,
        [NewItem("a.jpg", "/data/cats/a.jpg", "real"), NewItem("b.jpg", "/data/cats/b.jpg")]
        + [NewItem(f"u{i}.jpg", f"/data/cats/u{i}.jpg") for i in range(3)],
        labelled_by="ann",
    )
    assert added == 5
    assert store.count_items(cats.id) == {"real": 1, None: 4}
    store.set_predictions(
        cats.id,
        {
            "u0.jpg": {"label": "real", "confidence": 0.9},
            "u1.jpg": {"label": "synthetic", "confidence": 0.55},
            "u2.jpg": {"label": "real", "confidence": 0.7},
        },
    )
    queue = store.items(cats.id, labelled=False, order="uncertain")
    assert [i.key for i in queue] == ["u1.jpg", "u2.jpg", "u0.jpg", "b.jpg"]
    assert queue[0].prediction == {"label": "synthetic", "confidence": 0.55}
    assert store.set_labels(cats.id, {"u1.jpg": "synthetic", "missing": "real"}, "ann") == 1
    labelled = store.items(cats.id, labelled=True)
    assert [(i.key, i.label, i.labelled_by) for i in labelled] == [
        ("a.jpg", "real", "ann"),
        ("u1.jpg", "synthetic", "ann"),
    ]
    store.update_dataset_meta(cats.id, {"note": "x"})
    assert store.dataset(cats.id).meta == {"note": "x"}  # type: ignore[union-attr]
    with pytest.raises(StoreError, match="unknown order"):
        store.items(cats.id, order="random")
    assert store.remove_dataset(cats.id)
    assert store.dataset(cats.id) is None
    assert store.items(cats.id) == []


def test_meta_values_keep_the_first_writer(store: ConsoleStore) -> None:
    assert store.meta_value("secret", "one") == "one"
    assert store.meta_value("secret", "two") == "one"


def test_a_failed_transaction_leaves_nothing(store: ConsoleStore) -> None:
    dataset = store.add_dataset("d", "/d", "ann")
    with pytest.raises(Exception, match=r"(?i)null|constraint"):
        store.add_items(dataset.id, [NewItem("ok.jpg", "/d/ok.jpg"), NewItem("bad", None)])  # type: ignore[arg-type]
    assert store.items(dataset.id) == []


def test_threads_share_one_store(store: ConsoleStore) -> None:
    ann = store.add_user("ann", "h")

    def work(n: int) -> None:
        for i in range(20):
            store.add_session(f"s{n}-{i}", ann.id, time.time() + 60)
            assert store.session_user(f"s{n}-{i}", time.time()) == ann

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.purge_sessions(time.time() + 120) == 80


def test_urls_pick_the_implementation(tmp_path: Path) -> None:
    assert isinstance(open_store("", tmp_path), SqliteStore)
    assert (tmp_path / "synthdetect.db").exists()
    other = tmp_path / "x" / "other.db"
    assert isinstance(open_store(f"sqlite:///{other}", tmp_path), SqliteStore)
    assert other.exists()
    with pytest.raises(StoreError, match="unsupported database URL"):
        open_store("mysql://h/db", tmp_path)
    with pytest.raises(StoreError, match="schema name"):
        PostgresStore(POSTGRES_URL, schema="bad;name")


def test_the_schema_is_created_once_and_reopened(tmp_path: Path) -> None:
    first = open_store("", tmp_path)
    first.add_user("ann", "h")
    first.close()
    again = open_store("", tmp_path)
    assert again.user_by_name("ann") is not None
