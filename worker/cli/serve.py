"""``synthdetect serve``, ``synthdetect users`` and ``synthdetect apikeys``.

``serve`` runs the console and the invoke API in one uvicorn process; ``users``
and ``apikeys`` manage who may use them, straight in the console's database
(``SYNTHDETECT_SERVE_DATABASE_URL``), so they work before ``serve`` ever ran.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from worker.logs import configure_logging
from worker.serve.auth import create_api_key, hash_password
from worker.serve.db import StoreError
from worker.serve.services import open_console_store
from worker.settings import get_settings


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


@click.command()
@click.option("--host", default=None, help="Address to listen on [SYNTHDETECT_SERVE_HOST].")
@click.option("--port", type=int, default=None, help="Port to listen on [SYNTHDETECT_SERVE_PORT].")
def serve(host: str | None, port: int | None) -> None:
    """Run the web console and the invoke API (POST /v1/invoke) in one process."""
    import uvicorn

    from worker.serve.app import create_app

    settings = get_settings()
    configure_logging(settings)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.serve_host,
        port=port or settings.serve_port,
        log_config=None,  # our structlog setup formats uvicorn's lines too
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


@click.group()
def users() -> None:
    """Console users: add, list, remove."""


@users.command("add")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (for scripts).")
def add_user(username: str, password_stdin: bool) -> None:
    """Create a console user (asks for the password twice unless --password-stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    store = open_console_store(get_settings())
    try:
        store.add_user(username, hashed)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(f"user {username} created")


@users.command("list")
def list_users() -> None:
    """Every console user."""
    store = open_console_store(get_settings())
    table = Table()
    table.add_column("user")
    table.add_column("created")
    for user in store.list_users():
        table.add_row(user.username, _when(user.created_at))
    store.close()
    Console().print(table)


@users.command("remove")
@click.argument("username")
def remove_user(username: str) -> None:
    """Delete a console user and end their sessions."""
    store = open_console_store(get_settings())
    removed = store.remove_user(username)
    store.close()
    if not removed:
        raise click.ClickException(f"no user {username!r}")
    click.echo(f"user {username} removed")


@click.group()
def apikeys() -> None:
    """Invoke API keys: create, list, revoke."""


@apikeys.command("create")
@click.argument("name")
def create_key(name: str) -> None:
    """Create a key called NAME; the key is printed once and cannot be shown again."""
    store = open_console_store(get_settings())
    try:
        record, key = create_api_key(store, name, created_by="cli")
    finally:
        store.close()
    click.echo(key)
    click.echo(
        f"API key {record.id} ({name}) created; send it as 'Authorization: Bearer <key>'. "
        "It is not stored and cannot be shown again.",
        err=True,
    )


@apikeys.command("list")
def list_keys() -> None:
    """Every API key (ids and names only: the secrets are not stored)."""
    store = open_console_store(get_settings())
    table = Table()
    for column in ("id", "name", "created", "created by", "revoked"):
        table.add_column(column)
    for key in store.list_api_keys():
        table.add_row(
            key.id, key.name, _when(key.created_at), key.created_by, _when(key.revoked_at)
        )
    store.close()
    Console().print(table)


@apikeys.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke the key with id KEY_ID (the part after sdk_); requests with it get 401 at once."""
    store = open_console_store(get_settings())
    revoked = store.revoke_api_key(key_id)
    store.close()
    if not revoked:
        raise click.ClickException(f"no active API key {key_id!r}")
    click.echo(f"API key {key_id} revoked")
