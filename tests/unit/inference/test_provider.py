"""Hot swap safety in the model provider: a promoted version that does not load never
takes traffic; the version serving before keeps scoring, and the load is retried."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import torch
from PIL import Image

from contracts import ModelId, ModelRef
from tests.support.memory_store import MemoryStore
from tests.support.tiny_model import tiny_model
from tests.support.waiting import wait_until
from worker.classify.inputs import InputItem
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.errors import ChecksumMismatch, StorageError
from worker.imaging import ImageLimits
from worker.inference.engine import InferenceEngine
from worker.inference.provider import ModelProvider
from worker.inference.registry import AliasRecord, ModelRegistry
from worker.settings import Settings
from worker.storage import Storage

CPU = torch.device("cpu")
TINY = ModelRef(name="tiny")
RETRY_S = 1.0
"""Long enough that a busy machine still makes the calls meant to fall inside it."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def registry(root: Path) -> ModelRegistry:
    """tiny@1 in production; tiny@2 published with a model file that is not its card's."""
    registry = ModelRegistry(Storage(MemoryStore), [str(root)])
    registry.publish(*tiny_model(version="1"))
    registry.publish(*tiny_model(version="2", temperature=3.0))
    (root / "tiny" / "2" / "model.pt").write_bytes(b"a truncated upload")
    registry.write_alias("tiny", AliasRecord(version="1"))
    return registry


@pytest.fixture
def provider(registry: ModelRegistry) -> ModelProvider:
    return ModelProvider(registry, CPU, alias_ttl_s=0, load_retry_s=RETRY_S)


@pytest.fixture
def logs() -> Iterator[list[structlog.typing.EventDict]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (seed * 40 % 256, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_version_that_fails_its_checksum_never_replaces_the_serving_one(
    registry: ModelRegistry,
    provider: ModelProvider,
    root: Path,
    logs: list[structlog.typing.EventDict],
) -> None:
    serving = provider.get(TINY)
    registry.promote(ModelId(name="tiny", version="2"))
    assert provider.get(TINY) is serving
    failures = [e for e in logs if e["event"] == "model_load_failed"]
    assert len(failures) == 1
    assert failures[0]["version"] == "2"
    assert "sha256" in failures[0]["error"]
    # within the retry interval the broken version is not read again
    for _ in range(5):
        assert provider.get(TINY) is serving
    assert len([e for e in logs if e["event"] == "model_load_failed"]) == 1
    # a job pinned to the broken version fails on its own
    with pytest.raises(ChecksumMismatch):
        provider.get(ModelRef(name="tiny", version="2"))
    # once the file is repaired, the first call after the retry interval swaps
    (root / "tiny" / "2" / "model.pt").write_bytes(tiny_model(version="2")[1])
    repaired = ModelId(name="tiny", version="2")
    wait_until(
        lambda: provider.get(TINY).id == repaired,
        RETRY_S + 30,
        "the repaired tiny@2 to load on a retry",
    )


def test_images_keep_being_scored_by_the_old_version_while_the_new_one_fails(
    registry: ModelRegistry, root: Path, logs: list[structlog.typing.EventDict]
) -> None:
    settings = Settings(device="cpu", model_registry=str(root), max_wait_ms=1, alias_poll_s=0)
    engine = InferenceEngine.from_settings(settings, Storage(MemoryStore))
    engine.provider = ModelProvider(registry, CPU, alias_ttl_s=0, load_retry_s=RETRY_S)
    items = [InputItem(f"mem://{i}.png", lambda i=i: png(i)) for i in range(30)]
    results = []
    try:
        stream = classify_items(
            items,
            engine,
            TINY,
            ImageLimits.from_settings(settings),
            PipelineConfig(fetch_concurrency=4, decode_threads=2, window=8),
        )
        for i, result in enumerate(stream):
            results.append(result)
            if i == 5:
                registry.promote(ModelId(name="tiny", version="2"))
    finally:
        engine.close()
    assert len(results) == 30
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    assert {r.model.version for r in results if r.model} == {"1"}
    assert any(e["event"] == "model_load_failed" for e in logs)


def test_an_unreadable_alias_keeps_the_cached_target(
    registry: ModelRegistry,
    provider: ModelProvider,
    monkeypatch: pytest.MonkeyPatch,
    logs: list[structlog.typing.EventDict],
) -> None:
    serving = provider.get(TINY)

    def outage(ref: ModelRef, alias: str = "production") -> ModelId:
        raise StorageError("S3 is down")

    monkeypatch.setattr(registry, "resolve", outage)
    assert provider.get(TINY) is serving
    assert any(e["event"] == "model_alias_unreadable" for e in logs)


def test_an_alias_that_never_loaded_is_still_an_error(registry: ModelRegistry) -> None:
    registry.promote(ModelId(name="tiny", version="2"))
    provider = ModelProvider(registry, CPU, alias_ttl_s=0)
    with pytest.raises(ChecksumMismatch):
        provider.get(TINY)
