"""The console's records behind one small interface: SQLite by default, PostgreSQL in production.

::

    users          console logins (argon2 hashes, never passwords)
    sessions       console sessions, keyed by the sha256 of the cookie's token
    api_keys       invoke API keys, keyed by their public id; the secret's sha256 only
    runs           history of jobs and training runs started from the console or the API
    datasets       dataset metadata (the images themselves live in storage)
    dataset_items  one row per image of a dataset: where it is, its label (or none yet),
                   the latest prediction (what the label queue sorts by)
    meta           small key/value facts (the generated cookie-signing key)

Both implementations run the same SQL (``?`` placeholders become ``%s`` for
psycopg) through one connection guarded by a lock: the console's traffic is a
few people and the API's one lookup per request, so a pool would buy nothing
but moving parts. The schema is created on start (``CREATE TABLE IF NOT
EXISTS``), so a fresh database needs no migration step. Times are UNIX seconds
(``float``) and structured fields JSON text, the same in both databases.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_hash TEXT NOT NULL,
        created_by TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, owner TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        params TEXT NOT NULL, progress TEXT NOT NULL, result TEXT NOT NULL, error TEXT)""",
    """CREATE TABLE IF NOT EXISTS datasets (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, uri TEXT NOT NULL,
        owner TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, meta TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dataset_items (
        dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        key TEXT NOT NULL, uri TEXT NOT NULL, label TEXT, labelled_by TEXT,
        labelled_at DOUBLE PRECISION, added_at DOUBLE PRECISION NOT NULL,
        predicted_label TEXT, confidence DOUBLE PRECISION, prediction TEXT,
        PRIMARY KEY (dataset_id, key))""",
    "CREATE INDEX IF NOT EXISTS dataset_items_label ON dataset_items (dataset_id, label)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class StoreError(Exception):
    """A record cannot be written as asked (a duplicate name, an unknown id)."""


@dataclass(frozen=True)
class User:
    id: str
    username: str
    password_hash: str
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    """An API key's record; the secret itself is shown once at creation and never stored."""

    id: str
    name: str
    secret_hash: str
    created_by: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Run:
    """One job or training run: ``params`` as started, ``progress`` while it runs,
    ``result`` once done (all JSON objects)."""

    id: str
    kind: str
    status: str
    owner: str
    created_at: float
    updated_at: float
    params: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    uri: str
    """Where the dataset's images live (a folder or ``s3://`` prefix)."""
    owner: str
    created_at: float
    meta: dict[str, Any]


@dataclass(frozen=True)
class DatasetItem:
    dataset_id: str
    key: str
    """The image's name inside the dataset (unique per dataset)."""
    uri: str
    label: str | None
    labelled_by: str | None
    labelled_at: float | None
    added_at: float
    predicted_label: str | None
    confidence: float | None
    prediction: dict[str, Any] | None


@dataclass(frozen=True)
class NewItem:
    """An image to add to a dataset (``label`` None: unlabelled)."""

    key: str
    uri: str
    label: str | None = None


class _Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def close(self) -> None: ...


def new_id() -> str:
    return uuid.uuid4().hex


class ConsoleStore:
    """Every record of the console; one instance per process, safe to share between threads."""

    placeholder = "?"

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------

    def create_schema(self) -> None:
        with self._transaction():
            for statement in SCHEMA:
                self._run(statement)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._connection.execute(self._sql(sql), tuple(params))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._run("BEGIN")
            try:
                yield
            except BaseException:
                self._run("ROLLBACK")
                raise
            self._run("COMMIT")

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row = self._run(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(row) for row in self._run(sql, params).fetchall()]

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; the number of rows it touched."""
        with self._transaction():
            return int(self._run(sql, params).rowcount)

    def _unique(self, sql: str, params: Sequence[Any], what: str) -> None:
        try:
            self._write(sql, params)
        except Exception as exc:
            if _is_unique_violation(exc):
                raise StoreError(f"{what} already exists") from exc
            raise

    # --- meta -----------------------------------------------------------------------------

    def meta_value(self, key: str, default: str) -> str:
        """The value of ``key``; stores ``default`` first if there is none (first writer wins)."""
        self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, default)
        )
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        assert row is not None
        return str(row[0])

    # --- users ----------------------------------------------------------------------------

    def add_user(self, username: str, password_hash: str) -> User:
        user = User(new_id(), username, password_hash, time.time())
        self._unique(
            "INSERT INTO users (id, username, password_hash, created_at) VALUES (?, ?, ?, ?)",
            (user.id, user.username, user.password_hash, user.created_at),
            f"user {username!r}",
        )
        return user

    def user_by_name(self, username: str) -> User | None:
        row = self._one(
            "SELECT id, username, password_hash, created_at FROM users WHERE username = ?",
            (username,),
        )
        return User(*row) if row else None

    def user_by_id(self, user_id: str) -> User | None:
        row = self._one(
            "SELECT id, username, password_hash, created_at FROM users WHERE id = ?", (user_id,)
        )
        return User(*row) if row else None

    def list_users(self) -> list[User]:
        rows = self._all(
            "SELECT id, username, password_hash, created_at FROM users ORDER BY username"
        )
        return [User(*row) for row in rows]

    def set_password_hash(self, user_id: str, password_hash: str) -> None:
        self._write("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    def remove_user(self, username: str) -> bool:
        """Remove the user and end their sessions; False if there was none."""
        user = self.user_by_name(username)
        if user is None:
            return False
        with self._transaction():
            self._run("DELETE FROM sessions WHERE user_id = ?", (user.id,))
            self._run("DELETE FROM users WHERE id = ?", (user.id,))
        return True

    # --- sessions -------------------------------------------------------------------------

    def add_session(self, token_hash: str, user_id: str, expires_at: float) -> None:
        self._write(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) "
            "VALUES (?, ?, ?, ?)",
            (token_hash, user_id, time.time(), expires_at),
        )

    def session_user(self, token_hash: str, now: float) -> User | None:
        """The user of a session that has not expired, or None."""
        row = self._one(
            "SELECT u.id, u.username, u.password_hash, u.created_at FROM sessions s "
            "JOIN users u ON u.id = s.user_id WHERE s.token_hash = ? AND s.expires_at > ?",
            (token_hash, now),
        )
        return User(*row) if row else None

    def remove_session(self, token_hash: str) -> None:
        self._write("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def purge_sessions(self, now: float) -> int:
        return self._write("DELETE FROM sessions WHERE expires_at <= ?", (now,))

    # --- API keys -------------------------------------------------------------------------

    _KEY_COLUMNS = "id, name, secret_hash, created_by, created_at, revoked_at"

    def add_api_key(self, key_id: str, name: str, secret_hash: str, created_by: str) -> ApiKey:
        key = ApiKey(key_id, name, secret_hash, created_by, time.time(), None)
        self._unique(
            f"INSERT INTO api_keys ({self._KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, key.name, key.secret_hash, key.created_by, key.created_at, None),
            f"API key {key_id!r}",
        )
        return key

    def api_key(self, key_id: str) -> ApiKey | None:
        row = self._one(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return ApiKey(*row) if row else None

    def list_api_keys(self) -> list[ApiKey]:
        rows = self._all(f"SELECT {self._KEY_COLUMNS} FROM api_keys ORDER BY created_at")
        return [ApiKey(*row) for row in rows]

    def revoke_api_key(self, key_id: str) -> bool:
        """False if no active key has that id."""
        changed = self._write(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return changed > 0

    # --- runs -----------------------------------------------------------------------------

    _RUN_COLUMNS = (
        "id, kind, status, owner, created_at, updated_at, params, progress, result, error"
    )

    def add_run(self, kind: str, owner: str, params: dict[str, Any], status: str = "queued") -> Run:
        now = time.time()
        run = Run(new_id(), kind, status, owner, now, now, params, {}, {}, None)
        self._write(
            f"INSERT INTO runs ({self._RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run.id, kind, status, owner, now, now, json.dumps(params), "{}", "{}", None),
        )
        return run

    def update_run(
        self,
        run_id: str,
        *,
        status: str | None = None,
        progress: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Replace the given fields of a run (those left None keep their value)."""
        sets: list[str] = ["updated_at = ?"]
        params: list[Any] = [time.time()]
        for column, value in (
            ("status", status),
            ("progress", None if progress is None else json.dumps(progress)),
            ("result", None if result is None else json.dumps(result)),
            ("error", error),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if not self._write(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, run_id)):
            raise StoreError(f"no run {run_id!r}")

    def run(self, run_id: str) -> Run | None:
        row = self._one(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return _run(row) if row else None

    def list_runs(self, kind: str | None = None, limit: int = 100) -> list[Run]:
        """Newest first."""
        where, params = ("WHERE kind = ? ", [kind]) if kind else ("", [])
        rows = self._all(
            f"SELECT {self._RUN_COLUMNS} FROM runs {where}ORDER BY created_at DESC LIMIT ?",
            (*params, limit),
        )
        return [_run(row) for row in rows]

    # --- datasets -------------------------------------------------------------------------

    def add_dataset(
        self, name: str, uri: str, owner: str, meta: dict[str, Any] | None = None
    ) -> Dataset:
        dataset = Dataset(new_id(), name, uri, owner, time.time(), meta or {})
        self._unique(
            "INSERT INTO datasets (id, name, uri, owner, created_at, meta) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (dataset.id, name, uri, owner, dataset.created_at, json.dumps(dataset.meta)),
            f"dataset {name!r}",
        )
        return dataset

    def dataset(self, dataset_id: str) -> Dataset | None:
        row = self._one(
            "SELECT id, name, uri, owner, created_at, meta FROM datasets WHERE id = ?",
            (dataset_id,),
        )
        return _dataset(row) if row else None

    def list_datasets(self) -> list[Dataset]:
        rows = self._all(
            "SELECT id, name, uri, owner, created_at, meta FROM datasets ORDER BY created_at DESC"
        )
        return [_dataset(row) for row in rows]

    def update_dataset_meta(self, dataset_id: str, meta: dict[str, Any]) -> None:
        if not self._write(
            "UPDATE datasets SET meta = ? WHERE id = ?", (json.dumps(meta), dataset_id)
        ):
            raise StoreError(f"no dataset {dataset_id!r}")

    def remove_dataset(self, dataset_id: str) -> bool:
        with self._transaction():
            self._run("DELETE FROM dataset_items WHERE dataset_id = ?", (dataset_id,))
            return int(self._run("DELETE FROM datasets WHERE id = ?", (dataset_id,)).rowcount) > 0

    def add_items(
        self, dataset_id: str, items: Sequence[NewItem], labelled_by: str | None = None
    ) -> int:
        """Add images (a key already in the dataset gets the new uri and label); how many."""
        now = time.time()
        with self._transaction():
            for item in items:
                self._run(
                    "INSERT INTO dataset_items (dataset_id, key, uri, label, labelled_by, "
                    "labelled_at, added_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (dataset_id, key) DO UPDATE SET uri = excluded.uri, "
                    "label = excluded.label, labelled_by = excluded.labelled_by, "
                    "labelled_at = excluded.labelled_at",
                    (
                        dataset_id,
                        item.key,
                        item.uri,
                        item.label,
                        labelled_by if item.label is not None else None,
                        now if item.label is not None else None,
                        now,
                    ),
                )
        return len(items)

    def set_labels(self, dataset_id: str, labels: dict[str, str | None], labelled_by: str) -> int:
        """Label (or, with None, unlabel) images by key; how many exist and changed."""
        now = time.time()
        changed = 0
        with self._transaction():
            for key, label in labels.items():
                changed += int(
                    self._run(
                        "UPDATE dataset_items SET label = ?, labelled_by = ?, labelled_at = ? "
                        "WHERE dataset_id = ? AND key = ?",
                        (label, labelled_by, now, dataset_id, key),
                    ).rowcount
                )
        return changed

    def set_predictions(self, dataset_id: str, predictions: dict[str, dict[str, Any]]) -> None:
        """Keep each image's latest prediction (an ``ImageResult`` as JSON) for sorting."""
        with self._transaction():
            for key, result in predictions.items():
                self._run(
                    "UPDATE dataset_items SET predicted_label = ?, confidence = ?, prediction = ? "
                    "WHERE dataset_id = ? AND key = ?",
                    (
                        result.get("label"),
                        result.get("confidence"),
                        json.dumps(result),
                        dataset_id,
                        key,
                    ),
                )

    _ITEM_COLUMNS = (
        "dataset_id, key, uri, label, labelled_by, labelled_at, added_at, predicted_label, "
        "confidence, prediction"
    )

    def items(
        self,
        dataset_id: str,
        *,
        labelled: bool | None = None,
        order: str = "key",
        limit: int = 1000,
        offset: int = 0,
    ) -> list[DatasetItem]:
        """Images of a dataset; ``labelled`` filters; ``order`` is ``key``, ``recent`` or
        ``uncertain`` (lowest confidence first, never-predicted images last)."""
        orders = {
            "key": "key",
            "recent": "added_at DESC, key",
            "uncertain": "CASE WHEN confidence IS NULL THEN 1 ELSE 0 END, confidence, key",
        }
        if order not in orders:
            raise StoreError(f"unknown order {order!r}; use one of {sorted(orders)}")
        where = "WHERE dataset_id = ?"
        if labelled is True:
            where += " AND label IS NOT NULL"
        elif labelled is False:
            where += " AND label IS NULL"
        rows = self._all(
            f"SELECT {self._ITEM_COLUMNS} FROM dataset_items {where} "
            f"ORDER BY {orders[order]} LIMIT ? OFFSET ?",
            (dataset_id, limit, offset),
        )
        return [_item(row) for row in rows]

    def item(self, dataset_id: str, key: str) -> DatasetItem | None:
        """One image of a dataset by key (the console's previews look them up one by one)."""
        row = self._one(
            f"SELECT {self._ITEM_COLUMNS} FROM dataset_items WHERE dataset_id = ? AND key = ?",
            (dataset_id, key),
        )
        return _item(row) if row else None

    def count_items(self, dataset_id: str) -> dict[str | None, int]:
        """Images per label (None: unlabelled)."""
        rows = self._all(
            "SELECT label, COUNT(*) FROM dataset_items WHERE dataset_id = ? GROUP BY label",
            (dataset_id,),
        )
        return {row[0]: int(row[1]) for row in rows}


class SqliteStore(ConsoleStore):
    """A file (or ``:memory:``) database; WAL so readers never wait for the writer."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA busy_timeout = 5000")
        if str(path) != ":memory:":
            connection.execute("PRAGMA journal_mode = WAL")
        super().__init__(connection)


class PostgresStore(ConsoleStore):
    """PostgreSQL through psycopg 3; ``schema`` (created if missing) keeps tables apart."""

    placeholder = "%s"

    def __init__(self, url: str, schema: str | None = None) -> None:
        import psycopg  # the serve extra; only a PostgreSQL deployment needs it loaded

        if schema is not None and not schema.replace("_", "").isalnum():
            raise StoreError(f"schema name {schema!r} must be letters, digits and _")
        connection = psycopg.connect(url, autocommit=True)
        if schema is not None:
            connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            connection.execute(f'SET search_path TO "{schema}"')
        super().__init__(connection)


def open_store(url: str, data_dir: Path, schema: str | None = None) -> ConsoleStore:
    """The store ``url`` names (empty: SQLite in ``data_dir``), schema created."""
    scheme = urlsplit(url).scheme if url else "sqlite"
    store: ConsoleStore
    if scheme in ("postgresql", "postgres"):
        store = PostgresStore(url, schema)
    elif scheme == "sqlite":
        path = url.removeprefix("sqlite://").removeprefix("/") if url else ""
        store = SqliteStore(path or data_dir / "synthdetect.db")
    else:
        raise StoreError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:// or postgresql://"
        )
    store.create_schema()
    return store


def _is_unique_violation(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc)
    return getattr(exc, "sqlstate", None) == "23505"


def _json(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def _run(row: tuple[Any, ...]) -> Run:
    return Run(
        id=row[0],
        kind=row[1],
        status=row[2],
        owner=row[3],
        created_at=row[4],
        updated_at=row[5],
        params=_json(row[6]),
        progress=_json(row[7]),
        result=_json(row[8]),
        error=row[9],
    )


def _dataset(row: tuple[Any, ...]) -> Dataset:
    return Dataset(
        id=row[0], name=row[1], uri=row[2], owner=row[3], created_at=row[4], meta=_json(row[5])
    )


def _item(row: tuple[Any, ...]) -> DatasetItem:
    return DatasetItem(
        dataset_id=row[0],
        key=row[1],
        uri=row[2],
        label=row[3],
        labelled_by=row[4],
        labelled_at=row[5],
        added_at=row[6],
        predicted_label=row[7],
        confidence=row[8],
        prediction=_json(row[9]) if row[9] else None,
    )
