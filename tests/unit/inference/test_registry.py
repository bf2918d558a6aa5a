"""The model registry: versions, the production alias and its history, roots in order;
and the ``synthdetect models`` commands that drive it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from contracts import ModelId, ModelRef
from tests.support.memory_store import MemoryStore
from tests.support.tiny_model import tiny_model
from worker.cli.main import main
from worker.errors import ModelError
from worker.inference.registry import AliasRecord, ModelRegistry
from worker.settings import BUNDLED_MODELS, Settings
from worker.storage import Storage


def bundled_production() -> str:
    alias = json.loads((BUNDLED_MODELS / "default" / "aliases" / "production.json").read_text())
    return str(alias["version"])


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "registry")


@pytest.fixture
def registry(root: str) -> ModelRegistry:
    """One local root with tiny@1..3 published, and no alias yet."""
    registry = ModelRegistry(Storage(MemoryStore), [root])
    for version in ("1", "2", "3"):
        registry.publish(*tiny_model(version=version))
    return registry


def tiny(version: str) -> ModelId:
    return ModelId(name="tiny", version=version)


# --- versions ------------------------------------------------------------------------


def test_publish_writes_the_file_and_the_card(registry: ModelRegistry, root: str) -> None:
    card, data = tiny_model(version="4")
    card_uri = registry.publish(card, data)
    assert card_uri == f"{root}/tiny/4/card.json"
    assert Path(root, "tiny", "4", "model.pt").read_bytes() == data
    assert registry.read_card(tiny("4")).sha256 == card.sha256


def test_versions_are_listed_in_numeric_order_and_next_is_one_more(
    registry: ModelRegistry,
) -> None:
    registry.publish(*tiny_model(version="10"))
    registry.publish(*tiny_model(version="exp-a"))
    assert registry.list_versions("tiny") == ["1", "2", "3", "10", "exp-a"]
    assert registry.next_version("tiny") == "11"
    assert registry.next_version("new-model") == "1"
    assert registry.list_versions("new-model") == []


def test_job_records_next_to_versions_are_not_versions(registry: ModelRegistry, root: str) -> None:
    registry.storage.put_bytes(f"{root}/tiny/jobs/job-1/summary.json", b"{}")
    registry.write_alias("tiny", AliasRecord(version="1"))
    assert registry.list_versions("tiny") == ["1", "2", "3"]


def test_next_version_counts_the_bundled_models_too(root: str) -> None:
    registry = ModelRegistry.from_settings(Settings(model_registry=root), Storage(MemoryStore))
    assert registry.next_version("default") == str(int(bundled_production()) + 1)


# --- the production alias ------------------------------------------------------------


def test_promote_builds_a_history_and_rollback_pops_it(registry: ModelRegistry) -> None:
    assert registry.promote(tiny("1")) == AliasRecord(version="1")
    assert registry.promote(tiny("2")) == AliasRecord(version="2", history=("1",))
    assert registry.promote(tiny("3")) == AliasRecord(version="3", history=("1", "2"))
    # promoting the version in production again changes nothing
    assert registry.promote(tiny("3")) == AliasRecord(version="3", history=("1", "2"))
    assert registry.rollback("tiny") == AliasRecord(version="2", history=("1",))
    assert registry.resolve(ModelRef(name="tiny")) == tiny("2")
    assert registry.rollback("tiny") == AliasRecord(version="1")
    assert registry.read_alias("tiny") == AliasRecord(version="1")


def test_rollback_without_history_is_an_error(registry: ModelRegistry) -> None:
    with pytest.raises(ModelError, match="no earlier version"):
        registry.rollback("tiny")  # no alias at all
    registry.promote(tiny("1"))
    with pytest.raises(ModelError, match="no earlier version"):
        registry.rollback("tiny")
    assert registry.read_alias("tiny") == AliasRecord(version="1")


def test_promoting_a_missing_version_is_an_error_and_moves_nothing(
    registry: ModelRegistry,
) -> None:
    registry.promote(tiny("1"))
    with pytest.raises(ModelError, match="tiny@9"):
        registry.promote(tiny("9"))
    assert registry.read_alias("tiny") == AliasRecord(version="1")


def test_an_alias_in_the_configured_root_overrides_the_bundled_one(root: str) -> None:
    registry = ModelRegistry.from_settings(Settings(model_registry=root), Storage(MemoryStore))
    bundled = bundled_production()
    assert registry.resolve(ModelRef()) == ModelId(name="default", version=bundled)
    card, data = tiny_model(name="default", version="50")
    registry.publish(card, data)
    record = registry.promote(ModelId(name="default", version="50"))
    assert record == AliasRecord(version="50", history=(bundled,))
    assert registry.resolve(ModelRef()) == ModelId(name="default", version="50")
    assert Path(root, "default", "aliases", "production.json").is_file()
    # the bundled alias is never written: rolling back edits the configured root only
    assert registry.rollback("default") == AliasRecord(version=bundled)
    assert bundled_production() == bundled
    assert registry.resolve(ModelRef()) == ModelId(name="default", version=bundled)


# --- synthdetect models ----------------------------------------------------------------


def models(*args: str) -> str:
    result = CliRunner().invoke(main, ["models", *args], catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_models_promote_and_rollback_move_the_alias(registry: ModelRegistry, root: str) -> None:
    assert json.loads(models("promote", "tiny@1", "--registry", root)) == {
        "model": "tiny",
        "production": "1",
        "history": [],
    }
    assert json.loads(models("promote", "tiny@3", "--registry", root))["history"] == ["1"]
    assert registry.resolve(ModelRef(name="tiny")) == tiny("3")
    assert json.loads(models("rollback", "tiny", "--registry", root)) == {
        "model": "tiny",
        "production": "1",
        "history": [],
    }
    assert registry.resolve(ModelRef(name="tiny")) == tiny("1")


def test_models_list_marks_production_and_show_prints_the_card(
    registry: ModelRegistry, root: str
) -> None:
    registry.promote(tiny("2"))
    listing = models("list", "tiny", "--registry", root)
    assert "production = 2" in listing
    rows = {line.split("│")[1].strip(): line for line in listing.splitlines() if "│" in line}
    assert set(rows) >= {"1", "2", "3"}
    assert "production" in rows["2"]
    assert "production" not in rows["1"]
    card = json.loads(models("show", "tiny", "--registry", root))
    assert (card["name"], card["version"]) == ("tiny", "2")
    assert json.loads(models("show", "tiny@3", "--registry", root))["version"] == "3"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("rollback", "tiny"), "no earlier version", id="rollback without history"),
        pytest.param(("promote", "tiny@9"), "tiny@9", id="promote a missing version"),
        pytest.param(("show", "tiny@9"), "tiny@9", id="show a missing version"),
        pytest.param(("promote", "tiny"), "NAME@VERSION", id="promote without a version"),
    ],
)
def test_models_commands_fail_with_a_message(
    registry: ModelRegistry, root: str, args: tuple[str, ...], message: str
) -> None:
    result = CliRunner().invoke(main, ["models", *args, "--registry", root])
    assert result.exit_code != 0
    assert message in result.output
