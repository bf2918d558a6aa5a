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
from worker.serve.db import SqliteStore
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
    records = SqliteStore(":memory:")
    records.create_schema()
    return DatasetStore(records, Storage(MemoryStore), str(tmp_path), LIMITS)


def predictions_for(
    store: DatasetStore, engine: InferenceEngine, settings: Settings
) -> DatasetPredictions:
    return DatasetPredictions(engine, settings, store.storage, LIMITS, store.store)


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
    store.create("d", "ann", model="tiny")
    store.add_files("d", images(12), LabelRule(), "ann")
    dataset = store.get("d")
    labelled = [item.key for item in store.items(dataset)[:2]]
    store.set_labels("d", labelled, "real", "ann")

    queue = label_queue(
        dataset,
        store.items(dataset, labelled=False),
        predictions_for(store, engine, settings),
        default_model="default",
    )

    assert queue.model is not None
    assert (queue.model.name, queue.model.version) == ("tiny", "1")
    assert len(queue) == 10
    assert {e.item.key for e in queue.entries}.isdisjoint(labelled)
    doubts = [e.uncertainty or 0.0 for e in queue.entries]
    assert doubts == sorted(doubts, reverse=True)
    assert len(set(doubts)) > 1
    assert all(e.result is not None and e.result.label is not None for e in queue.entries)


def test_predictions_are_kept_per_version_and_labels_join_at_read_time(
    store: DatasetStore,
    engine: InferenceEngine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.create("d", "ann", model="tiny")
    store.add_files("d", images(3), LabelRule(), "ann")
    dataset = store.get("d")
    predictions = predictions_for(store, engine, settings)
    model = predictions.resolve(ModelRef(name="tiny"))
    first = predictions.predict(dataset, model, store.items(dataset))
    key = store.items(dataset)[0].key
    store.set_labels("d", [key], "synthetic", "ann")

    def no_second_scoring(*args: object) -> None:
        raise AssertionError("kept predictions were scored again")

    monkeypatch.setattr("worker.serve.predictions.classify_items", no_second_scoring)
    again = predictions.predict(dataset, model, store.items(dataset))
    assert again[key].true_label == "synthetic"
    assert again[key].scores == first[key].scores
    assert first[key].true_label is None
    # a new process (or replica) reads them back from the database
    restarted = predictions_for(store, engine, settings)
    assert restarted.predict(dataset, model, store.items(dataset))[key].scores == first[key].scores


def test_without_any_model_the_queue_is_newest_first(
    store: DatasetStore, engine: InferenceEngine, settings: Settings
) -> None:
    store.create("d", "ann", model="never-trained")
    for upload in images(3):
        store.add_files("d", [upload], LabelRule(), "ann")
    dataset = store.get("d")
    queue = label_queue(
        dataset,
        store.items(dataset, labelled=False),
        predictions_for(store, engine, settings),
        default_model="also-missing",
    )
    assert queue.model is None
    added = [e.item.added_at for e in queue.entries]
    assert added == sorted(added, reverse=True)
    assert len(queue) == 3
