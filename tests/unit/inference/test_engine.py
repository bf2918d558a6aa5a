"""Inference engine: device choice, trusted model loading, calibrated scores, registry and
alias following, mixed-model batches, and the engine end to end with a tiny real model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts import Calibration, ModelId, ModelRef
from tests.support.memory_store import MemoryStore
from tests.support.tiny_model import TINY_INPUT_SIZE, TINY_LABELS, tiny_model
from worker.errors import ChecksumMismatch, ModelError
from worker.inference.device import select_device
from worker.inference.engine import InferenceEngine, ScoringRequest, score_requests
from worker.inference.model import LoadedModel, Prediction, load_model, sha256_hex
from worker.inference.provider import ModelProvider
from worker.inference.registry import AliasRecord, ModelRegistry
from worker.settings import BUNDLED_MODELS, Settings
from worker.storage import Storage

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random uint8 images at the tiny model's input size."""
    return np.random.default_rng(seed).integers(0, 256, (n, *TINY_INPUT_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    card, data = tiny_model()
    return load_model(card, data, CPU)


@pytest.fixture
def storage() -> Storage:
    return Storage(MemoryStore)


@pytest.fixture
def registry(tmp_path: Path, storage: Storage) -> ModelRegistry:
    """A local registry root with tiny@1 and tiny@2 (temperatures 1 and 3); production -> 1."""
    registry = ModelRegistry(storage, [str(tmp_path / "registry")])
    for version, temperature in (("1", 1.0), ("2", 3.0)):
        registry.publish(*tiny_model(version=version, temperature=temperature))
    registry.write_alias("tiny", AliasRecord(version="1"))
    return registry


# --- device ----------------------------------------------------------------------------


def test_auto_uses_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == CPU


def test_auto_uses_cuda_when_a_gpu_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto").type == "cuda"


def test_asking_for_cuda_without_a_gpu_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no CUDA device"):
        select_device("cuda")


def test_cpu_never_asks_about_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def touched() -> bool:
        raise AssertionError("select_device('cpu') queried CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", touched)
    assert select_device("cpu") == CPU


# --- loading ---------------------------------------------------------------------------


def test_a_file_that_is_not_the_one_on_the_card_is_refused() -> None:
    card, data = tiny_model()
    with pytest.raises(ChecksumMismatch, match="sha256"):
        load_model(card, data[:-1], CPU)
    with pytest.raises(ChecksumMismatch):
        load_model(card.model_copy(update={"sha256": "0" * 64}), data, CPU)


def test_an_unsupported_format_is_refused() -> None:
    card, data = tiny_model()
    with pytest.raises(ModelError, match="unsupported format 'onnx'"):
        load_model(card.model_copy(update={"format": "onnx"}), data, CPU)


def test_bytes_that_are_not_torchscript_are_a_model_error() -> None:
    card, _ = tiny_model()
    junk = b"definitely not a zip archive"
    with pytest.raises(ModelError, match="does not load"):
        load_model(card.model_copy(update={"sha256": sha256_hex(junk)}), junk, CPU)


def test_probabilities_have_one_row_per_image_summing_to_one(model: LoadedModel) -> None:
    probs = model.predict_proba(images(5))
    assert probs.shape == (5, len(TINY_LABELS))
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_the_card_temperature_divides_the_logits(model: LoadedModel) -> None:
    card, data = tiny_model(temperature=4.0)
    hot = load_model(card, data, CPU)
    batch = images(8)
    sharp, soft = model.predict_proba(batch), hot.predict_proba(batch)
    assert np.array_equal(sharp.argmax(axis=1), soft.argmax(axis=1))
    assert np.all(soft.max(axis=1) < sharp.max(axis=1))
    # softmax(z / T) == softmax(log softmax(z) / T): exactly temperature scaling, nothing else
    expected = torch.softmax(torch.from_numpy(np.log(sharp)) / 4.0, dim=1).numpy()
    np.testing.assert_allclose(soft, expected, atol=1e-5)


def test_predictions_name_the_label_model_and_scores(model: LoadedModel) -> None:
    probs = model.predict_proba(images(3))
    predictions = model.predict(images(3))
    for row, prediction in zip(probs, predictions, strict=True):
        assert prediction.label == TINY_LABELS[int(row.argmax())]
        assert prediction.confidence == pytest.approx(float(row.max()))
        assert prediction.scores == pytest.approx(dict(zip(TINY_LABELS, row.tolist(), strict=True)))
        assert prediction.model == ModelId(name="tiny", version="1")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.zeros((2, 16, 16, 3), np.uint8), id="wrong size"),
        pytest.param(np.zeros((2, *TINY_INPUT_SIZE, 4), np.uint8), id="four channels"),
        pytest.param(np.zeros((*TINY_INPUT_SIZE, 3), np.uint8), id="no batch axis"),
        pytest.param(np.zeros((2, *TINY_INPUT_SIZE, 3), np.float32), id="float pixels"),
    ],
)
def test_wrong_input_shape_or_dtype_is_a_value_error(model: LoadedModel, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected uint8 images"):
        model.predict_proba(bad)


# --- registry --------------------------------------------------------------------------


def test_registry_resolves_the_alias_and_pinned_versions(registry: ModelRegistry) -> None:
    assert registry.resolve(ModelRef(name="tiny")) == ModelId(name="tiny", version="1")
    assert registry.resolve(ModelRef(name="tiny", version="2")) == ModelId(name="tiny", version="2")
    registry.write_alias("tiny", AliasRecord(version="2", history=("1",)))
    assert registry.resolve(ModelRef(name="tiny")).version == "2"
    assert registry.read_alias("tiny") == AliasRecord(version="2", history=("1",))


def test_registry_reads_back_what_was_published(registry: ModelRegistry) -> None:
    card, data = registry.read_model(ModelId(name="tiny", version="2"))
    assert card == tiny_model(version="2", temperature=3.0)[0].model_copy(
        update={"created_at": card.created_at}
    )
    assert sha256_hex(data) == card.sha256


@pytest.mark.parametrize(
    "ref",
    [
        pytest.param(ModelRef(name="tiny", version="9"), id="missing version"),
        pytest.param(ModelRef(name="nope"), id="missing model"),
        pytest.param(ModelRef(name="nope", version="1"), id="missing pinned model"),
    ],
)
def test_registry_names_what_is_missing(registry: ModelRegistry, ref: ModelRef) -> None:
    with pytest.raises(ModelError, match=ref.name):
        registry.resolve(ref)


def test_an_empty_registry_falls_back_to_the_bundled_default(
    tmp_path: Path, storage: Storage
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    registry = ModelRegistry.from_settings(Settings(model_registry=str(empty)), storage)
    bundled = json.loads((BUNDLED_MODELS / "default" / "aliases" / "production.json").read_text())
    resolved = registry.resolve(ModelRef())
    assert resolved == ModelId(name="default", version=str(bundled["version"]))
    assert registry.read_card(resolved).name == "default"
    assert registry.primary_root == str(empty)  # new versions go to the configured root


def test_the_configured_root_wins_over_the_bundled_one(tmp_path: Path, storage: Storage) -> None:
    registry = ModelRegistry.from_settings(Settings(model_registry=str(tmp_path)), storage)
    registry.publish(*tiny_model(name="default", version="77"))
    registry.write_alias("default", AliasRecord(version="77"))
    assert registry.resolve(ModelRef()) == ModelId(name="default", version="77")


# --- provider --------------------------------------------------------------------------


def test_provider_follows_an_alias_move_and_keeps_pinned_versions(
    registry: ModelRegistry,
) -> None:
    provider = ModelProvider(registry, CPU, alias_ttl_s=0)
    pinned = ModelRef(name="tiny", version="1")
    first = provider.get(ModelRef(name="tiny"))
    assert first.id.version == "1"
    assert provider.get(pinned) is first  # loaded once, shared
    registry.write_alias("tiny", AliasRecord(version="2", history=("1",)))
    moved = provider.get(ModelRef(name="tiny"))
    assert moved.id.version == "2"
    assert moved.card.calibration == Calibration(temperature=3.0)
    assert provider.get(pinned) is first


def test_provider_caches_the_alias_for_its_ttl(registry: ModelRegistry) -> None:
    provider = ModelProvider(registry, CPU, alias_ttl_s=3600)
    assert provider.resolve(ModelRef(name="tiny")).version == "1"
    registry.write_alias("tiny", AliasRecord(version="2"))
    assert provider.resolve(ModelRef(name="tiny")).version == "1"


def test_provider_refuses_a_tampered_file(registry: ModelRegistry, tmp_path: Path) -> None:
    (tmp_path / "registry" / "tiny" / "2" / "model.pt").write_bytes(b"swapped")
    provider = ModelProvider(registry, CPU, alias_ttl_s=0)
    with pytest.raises(ChecksumMismatch):
        provider.get(ModelRef(name="tiny", version="2"))


# --- batches and the engine ------------------------------------------------------------


def recording_calls(
    model: LoadedModel, sizes: list[int]
) -> Callable[[np.ndarray], list[Prediction]]:
    """``model.predict`` that also appends each batch's size to ``sizes``."""
    predict = model.predict

    def recorded(batch: np.ndarray) -> list[Prediction]:
        sizes.append(len(batch))
        return predict(batch)

    return recorded


def test_a_mixed_batch_runs_once_per_model_and_keeps_request_order(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = ModelProvider(registry, CPU, alias_ttl_s=0)
    one = provider.get(ModelRef(name="tiny", version="1"))
    two = provider.get(ModelRef(name="tiny", version="2"))
    calls: dict[str, list[int]] = {"1": [], "2": []}
    for loaded in (one, two):
        monkeypatch.setattr(loaded, "predict", recording_calls(loaded, calls[loaded.id.version]))
    pixels = images(5)
    owners = [one, two, one, one, two]
    results = score_requests([ScoringRequest(p, m) for p, m in zip(pixels, owners, strict=True)])
    assert calls == {"1": [3], "2": [2]}
    assert [r.model.version for r in results] == ["1", "2", "1", "1", "2"]
    for pixel, owner, result in zip(pixels, owners, results, strict=True):
        alone = owner.predict(pixel[None])[0]
        assert result.label == alone.label
        assert result.confidence == pytest.approx(alone.confidence, abs=1e-5)


def test_engine_scores_submitted_images_in_shared_batches(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    registry = ModelRegistry(Storage(MemoryStore), [str(root)])
    registry.publish(*tiny_model(version="1"))
    registry.write_alias("tiny", AliasRecord(version="1"))
    settings = Settings(device="cpu", model_registry=str(root), max_batch=4, max_wait_ms=50)
    engine = InferenceEngine.from_settings(settings, Storage(MemoryStore))
    try:
        model = engine.model_for(ModelRef(name="tiny"))
        pixels = images(10)
        futures = [engine.submit(p, model) for p in pixels]
        predictions: list[Prediction] = [f.result(timeout=10) for f in futures]
    finally:
        engine.close()
    expected = model.predict(pixels)
    assert [p.label for p in predictions] == [p.label for p in expected]
    for prediction in predictions:
        assert prediction.model == ModelId(name="tiny", version="1")
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert engine.stats.items == 10
    assert max(engine.stats.recent_sizes) <= 4
    assert engine.stats.batches >= 3
