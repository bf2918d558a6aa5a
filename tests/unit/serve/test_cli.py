"""``synthdetect users`` and ``synthdetect apikeys`` against a temporary SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli.main import main
from worker.serve.auth import check_api_key
from worker.serve.services import open_console_store
from worker.settings import Settings, get_settings


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("SYNTHDETECT_SERVE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_users_add_list_remove(runner: CliRunner, tmp_path: Path) -> None:
    added = runner.invoke(main, ["users", "add", "ann", "--password-stdin"], input="long enough\n")
    assert added.exit_code == 0, added.output
    again = runner.invoke(main, ["users", "add", "ann", "--password-stdin"], input="long enough\n")
    assert again.exit_code == 1
    assert "already exists" in again.output
    short = runner.invoke(main, ["users", "add", "bob", "--password-stdin"], input="short\n")
    assert short.exit_code == 1
    assert "8 characters" in short.output
    prompted = runner.invoke(main, ["users", "add", "cy"], input="long enough\nlong enough\n")
    assert prompted.exit_code == 0, prompted.output
    listed = runner.invoke(main, ["users", "list"])
    assert "ann" in listed.output
    assert "cy" in listed.output
    assert runner.invoke(main, ["users", "remove", "ann"]).exit_code == 0
    gone = runner.invoke(main, ["users", "remove", "ann"])
    assert gone.exit_code == 1
    assert "no user" in gone.output
    store = open_console_store(Settings(serve_data_dir=tmp_path))
    assert [u.username for u in store.list_users()] == ["cy"]


def test_apikeys_create_list_revoke(runner: CliRunner, tmp_path: Path) -> None:
    created = runner.invoke(main, ["apikeys", "create", "ci"])
    assert created.exit_code == 0
    key = created.stdout.strip()
    assert key.startswith("sdk_")
    store = open_console_store(Settings(serve_data_dir=tmp_path))
    record = check_api_key(store, key)
    assert record is not None
    listed = runner.invoke(main, ["apikeys", "list"])
    assert record.id in listed.output
    assert key.split("_", 2)[2] not in listed.output  # the secret is never shown again
    assert runner.invoke(main, ["apikeys", "revoke", record.id]).exit_code == 0
    assert check_api_key(store, key) is None
    again = runner.invoke(main, ["apikeys", "revoke", record.id])
    assert again.exit_code == 1
    assert "no active API key" in again.output


def test_serve_is_listed_and_documents_its_options(runner: CliRunner) -> None:
    helped = runner.invoke(main, ["serve", "--help"])
    assert helped.exit_code == 0
    assert "--port" in helped.output
    assert "serve" in runner.invoke(main, ["--help"]).output
