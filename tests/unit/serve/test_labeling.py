"""The label queue: unlabelled images, least certain first, scored once per model version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from contracts import ErrorCode, ImageError, ImageResult, ModelRef
from tests.support.memory_store import MemoryStore
from tests.support.tiny_model import tiny_model
from tests.support.toy_images import png_bytes
from worker.imaging import ImageLimits
from worker.inference.engine import InferenceEngine
from worker.inference.registry import AliasRecord, ModelRegistry
from worker.serve.datasets import DatasetStore, LabelRule, UploadedFile
from worker.serve.labeling import label_queue
from worker.serve.predictions import DatasetPredictions, uncertainty
from worker.settings import Settings
from worker.storage import Storage

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LIMITS = ImageLimits.from_settings(Settings())


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(Storage(MemoryStore), [str(root)])
    registry.publish(*tiny_model())
    registry.write_alias("tiny", AliasRecord(version="1"))
    return Settings(device="cpu", model_registry=str(root), max_batch=8, max_wait_ms=1)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[InferenceEngine]:
    engine = InferenceEngine.from_settings(settings, Storage(MemoryStore))
    yield engine
    engine.close()


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(Storage(MemoryStore), str(tmp_path), LIMITS)


def images(n: int) -> list[UploadedFile]:
    rng = np.random.default_rng(7)
    return [
        UploadedFile(f"{i}.png", png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
        for i in range(n)
    ]


def test_uncertainty_is_one_minus_the_top_two_margin() -> None:
    sure = ImageResult(
        uri="a", label="real", confidence=0.9, scores={"real": 0.9, "synthetic": 0.1}
    )
    coin = ImageResult(
        uri="b", label="real", confidence=0.5, scores={"real": 0.5, "synthetic": 0.5}
    )
    failed = ImageResult(
        uri="c", error=ImageError(code=ErrorCode.CORRUPT_IMAGE, message="cannot decode")
    )
    assert uncertainty(sure) == pytest.approx(0.2)
    assert uncertainty(coin) == pytest.approx(1.0)
    assert uncertainty(failed) == -1.0


def test_the_queue_holds_unlabelled_images_least_certain_first(
    store: DatasetStore, engine: InferenceEngine, settings: Settings
) -> None:
    store.create("d", model="tiny")
    store.add_files("d", images(12), LabelRule())
    record = store.get("d")
    store.set_labels("d", [record.items[0].id, record.items[1].id], "real")
    predictions = DatasetPredictions(engine, settings, store.storage, LIMITS)

    queue = label_queue(store.get("d"), predictions, default_model="default")

    assert queue.model is not None
    assert (queue.model.name, queue.model.version) == ("tiny", "1")
    assert len(queue) == 10
    assert {e.item.id for e in queue.entries}.isdisjoint({record.items[0].id, record.items[1].id})
    doubts = [e.uncertainty for e in queue.entries]
    assert doubts == sorted(doubts, reverse=True)  # type: ignore[type-var]
    assert all(e.result is not None and e.result.label is not None for e in queue.entries)


def test_predictions_are_kept_per_version_and_labels_join_at_read_time(
    store: DatasetStore,
    engine: InferenceEngine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.create("d", model="tiny")
    store.add_files("d", images(3), LabelRule())
    predictions = DatasetPredictions(engine, settings, store.storage, LIMITS)
    model = predictions.resolve(ModelRef(name="tiny"))
    first = predictions.predict(model, store.get("d").items)
    item = store.get("d").items[0]
    store.set_labels("d", [item.id], "synthetic")

    def no_second_scoring(*args: object) -> None:
        raise AssertionError("kept predictions were scored again")

    monkeypatch.setattr("worker.serve.predictions.classify_items", no_second_scoring)
    again = predictions.predict(model, store.get("d").items)
    assert again[item.id].true_label == "synthetic"
    assert again[item.id].scores == first[item.id].scores
    assert first[item.id].true_label is None


def test_without_any_model_the_queue_is_newest_first(
    store: DatasetStore, engine: InferenceEngine, settings: Settings
) -> None:
    store.create("d", model="never-trained")
    store.add_files("d", images(3), LabelRule())
    predictions = DatasetPredictions(engine, settings, store.storage, LIMITS)
    queue = label_queue(store.get("d"), predictions, default_model="also-missing")
    assert queue.model is None
    assert [e.item.seq for e in queue.entries] == [2, 1, 0]
