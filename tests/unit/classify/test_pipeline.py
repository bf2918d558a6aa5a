"""classify_items: results in input order, one error per bad image, bounded read-ahead."""

from __future__ import annotations

import dataclasses
import io
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contracts import ErrorCode, ImageResult, ModelRef
from tests.support.memory_store import MemoryStore
from tests.support.provenance_files import c2pa_signed, make_identity
from tests.support.tiny_model import TINY_LABELS, tiny_domain_model, tiny_model
from tests.support.toy_images import bright_and_dark, png_bytes
from worker.classify.inputs import InputItem
from worker.classify.pipeline import PipelineConfig, PipelinePools, classify_items
from worker.classify.verdict import DomainPolicy
from worker.errors import ImageFailure, ModelError
from worker.imaging import ImageLimits
from worker.inference.engine import InferenceEngine
from worker.inference.registry import AliasRecord, ModelRegistry
from worker.settings import Settings
from worker.storage import Storage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ModelRef(name="tiny")
LIMITS = ImageLimits.from_settings(Settings())
CONFIG = PipelineConfig(fetch_concurrency=4, decode_threads=2, window=12)


def encode(fmt: str, seed: int = 0, size: tuple[int, int] = (20, 14)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


PNG = encode("PNG", seed=1)
JPEG = encode("JPEG", seed=2)


def item(uri: str, data: bytes, true_label: str | None = None) -> InputItem:
    return InputItem(uri, lambda: data, true_label)


def failing(uri: str, exc: Exception) -> InputItem:
    def load() -> bytes:
        raise exc

    return InputItem(uri, load)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceEngine]:
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(Storage(MemoryStore), [str(root)])
    registry.publish(*tiny_model())
    registry.write_alias("tiny", AliasRecord(version="1"))
    settings = Settings(device="cpu", model_registry=str(root), max_batch=8, max_wait_ms=1)
    engine = InferenceEngine.from_settings(settings, Storage(MemoryStore))
    yield engine
    engine.close()


def classify(engine: InferenceEngine, items: list[InputItem]) -> list[ImageResult]:
    return list(classify_items(items, engine, TINY, LIMITS, CONFIG))


def code_of(result: ImageResult) -> ErrorCode | None:
    return result.error.code if result.error else None


def test_each_bad_image_gets_its_own_error_and_the_rest_are_labelled(
    engine: InferenceEngine,
) -> None:
    items = [
        item("good.png", PNG, true_label="real"),
        failing("gone.jpg", ImageFailure(ErrorCode.NOT_FOUND, "no such file")),
        item("good.jpg", JPEG),
        item("truncated.png", PNG[: len(PNG) // 2], true_label="synthetic"),
        item("notes.jpg", b"these are not pixels"),
        item("empty.png", b""),
        item("again.png", PNG),
    ]
    results = classify(engine, items)
    assert [r.uri for r in results] == [i.uri for i in items]
    assert [code_of(r) for r in results] == [
        None,
        ErrorCode.NOT_FOUND,
        None,
        ErrorCode.CORRUPT_IMAGE,
        ErrorCode.UNSUPPORTED_FORMAT,
        ErrorCode.EMPTY_FILE,
        None,
    ]
    labelled = [r for r in results if r.error is None]
    for result in labelled:
        assert result.label in TINY_LABELS
        assert result.model is not None
        assert result.model.version == "1"
    assert labelled[0].scores == labelled[2].scores  # the same bytes score the same
    assert results[1].error is not None
    assert results[1].error.message == "no such file"
    assert [r.true_label for r in results[:4]] == ["real", None, None, "synthetic"]


def test_an_unexpected_exception_is_an_internal_error_and_the_stream_goes_on(
    engine: InferenceEngine,
) -> None:
    items = [
        item("a.png", PNG),
        failing("bug.png", RuntimeError("something nobody expected")),
        item("b.jpg", JPEG),
    ]
    results = classify(engine, items)
    assert [code_of(r) for r in results] == [None, ErrorCode.INTERNAL_ERROR, None]
    assert results[1].error is not None
    assert "RuntimeError: something nobody expected" in results[1].error.message


def test_a_failed_batch_is_an_inference_error_for_its_images(
    engine: InferenceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = engine.model_for(TINY)

    def broken(images: np.ndarray) -> list[object]:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(model, "predict", broken)
    results = classify(engine, [item("a.png", PNG), item("b.jpg", JPEG)])
    assert [code_of(r) for r in results] == [ErrorCode.INFERENCE_FAILED] * 2


def test_an_unusable_model_fails_the_whole_run(engine: InferenceEngine) -> None:
    with pytest.raises(ModelError, match="nope"):
        list(classify_items([item("a.png", PNG)], engine, ModelRef(name="nope"), LIMITS, CONFIG))


def test_no_items_give_no_results(engine: InferenceEngine) -> None:
    assert classify(engine, []) == []


def test_a_long_input_streams_with_bounded_read_ahead(engine: InferenceEngine) -> None:
    total, window = 5_000, 6
    pulled = 0

    def source() -> Iterator[InputItem]:
        nonlocal pulled
        for n in range(total):
            pulled += 1
            if n % 100 == 0:  # a real image now and then; the rest fail fast without the model
                yield item(f"img-{n}.png", PNG)
            else:
                yield failing(f"img-{n}.png", ImageFailure(ErrorCode.NOT_FOUND, "gone"))

    config = PipelineConfig(fetch_concurrency=2, decode_threads=1, window=window)
    most_ahead = 0
    results = classify_items(source(), engine, TINY, LIMITS, config)
    for consumed, result in enumerate(results):
        assert result.uri == f"img-{consumed}.png"
        ahead = pulled - consumed
        assert ahead <= window, f"{ahead} items pulled ahead of the consumer at {consumed}"
        most_ahead = max(most_ahead, ahead)
    assert pulled == total
    assert most_ahead == window  # the window is used, not just respected


def test_an_abandoned_stream_stops_pulling_input(engine: InferenceEngine) -> None:
    pulled = itertools.count()

    def source() -> Iterator[InputItem]:
        for n in pulled:
            yield item(f"img-{n}.png", PNG)

    results = classify_items(source(), engine, TINY, LIMITS, CONFIG)
    first_three = list(itertools.islice(results, 3))
    results.close()
    assert [r.uri for r in first_three] == ["img-0.png", "img-1.png", "img-2.png"]
    assert next(pulled) <= 3 + CONFIG.window


def test_config_from_settings_scales_the_window_with_the_batch() -> None:
    config = PipelineConfig.from_settings(
        Settings(fetch_concurrency=3, max_batch=5, decode_threads=2)
    )
    assert config == PipelineConfig(fetch_concurrency=3, decode_threads=2, window=23)


def test_local_files_flow_through_the_same_pipeline(
    engine: InferenceEngine, tmp_path: Path
) -> None:
    from worker.classify.inputs import expand_paths

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(PNG)
    (tmp_path / "real" / "b.jpg").write_bytes(b"\xff\xd8\xff broken jpeg")
    items = expand_paths([str(tmp_path)], Storage(MemoryStore), LIMITS.max_bytes, True)
    results = list(classify_items(items, engine, TINY, LIMITS, CONFIG))
    assert [(Path(r.uri).name, code_of(r), r.true_label) for r in results] == [
        ("a.png", None, "real"),
        ("b.jpg", ErrorCode.CORRUPT_IMAGE, "real"),
    ]


def test_in_memory_images_are_read_ahead_by_bytes_too(engine: InferenceEngine) -> None:
    pulled = 0

    def source() -> Iterator[InputItem]:
        nonlocal pulled
        for n in range(60):
            pulled += 1
            yield InputItem(f"t.tar#{n}.png", lambda: PNG, in_memory=True, size=1000)

    config = PipelineConfig(fetch_concurrency=2, decode_threads=2, window=50, window_bytes=5000)
    most_ahead = 0
    for consumed, result in enumerate(classify_items(source(), engine, TINY, LIMITS, config)):
        assert result.error is None
        most_ahead = max(most_ahead, pulled - consumed)
    assert pulled == 60
    # 5,000 bytes hold five of these; a chunk may overshoot by one item, never the count window
    assert most_ahead <= 2 * 5


# --- domain check and provenance ----------------------------------------------------------


@pytest.fixture(scope="module")
def domain_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceEngine]:
    """An engine serving the tiny model with a domain check (narrow: auto abstains)."""
    root = tmp_path_factory.mktemp("domain-registry")
    registry = ModelRegistry(Storage(MemoryStore), [str(root)])
    registry.publish(*tiny_domain_model())
    registry.write_alias("tiny", AliasRecord(version="1"))
    settings = Settings(device="cpu", model_registry=str(root), max_batch=8, max_wait_ms=1)
    engine = InferenceEngine.from_settings(settings, Storage(MemoryStore))
    yield engine
    engine.close()


def test_results_carry_the_domain_check_and_abstain_outside_it(
    domain_engine: InferenceEngine,
) -> None:
    familiar, _ = bright_and_dark(2, size=8, seed=4)
    items = [
        item("small.png", png_bytes(familiar[0])),
        item("photo.png", encode("PNG", seed=3, size=(400, 300))),
    ]
    small, photo = list(classify_items(items, domain_engine, TINY, LIMITS, CONFIG))
    assert small.domain is not None
    assert small.domain.in_domain is True
    assert small.label in TINY_LABELS
    assert small.decided_by == "model"
    assert photo.domain is not None
    assert photo.domain.in_domain is False
    assert photo.domain.reason == "input 400x300 is far outside the training sizes 8x8"
    assert photo.label is None
    assert code_of(photo) == ErrorCode.OUT_OF_DOMAIN
    assert photo.scores is not None


def test_the_flag_policy_keeps_the_label(domain_engine: InferenceEngine) -> None:
    config = dataclasses.replace(CONFIG, policy=DomainPolicy("flag"))
    items = [item("photo.png", encode("PNG", seed=3, size=(400, 300)))]
    (photo,) = classify_items(items, domain_engine, TINY, LIMITS, config)
    assert photo.label in TINY_LABELS
    assert photo.domain is not None
    assert photo.domain.in_domain is False


def test_a_model_without_a_domain_check_says_unknown(engine: InferenceEngine) -> None:
    (result,) = classify(engine, [item("a.png", PNG)])
    assert result.domain is not None
    assert result.domain.in_domain is None
    assert result.domain.reason is not None


def test_a_validated_c2pa_claim_labels_the_image(
    domain_engine: InferenceEngine, tmp_path: Path
) -> None:
    identity = make_identity("pipeline test")
    anchors = identity.write_anchor(tmp_path)
    signed = c2pa_signed(encode("JPEG", seed=5, size=(400, 300)), identity)
    trusting = dataclasses.replace(CONFIG, trust_anchors=anchors)
    (decided,) = classify_items([item("gen.jpg", signed)], domain_engine, TINY, LIMITS, trusting)
    assert decided.label == "synthetic"
    assert decided.decided_by == "provenance"
    assert decided.provenance is not None
    assert decided.provenance.validated is True
    (reported,) = classify_items([item("gen.jpg", signed)], domain_engine, TINY, LIMITS, CONFIG)
    assert reported.provenance is not None
    assert reported.provenance.validated is False
    assert reported.label is None  # out of domain, abstained: the claim is only reported
    off = dataclasses.replace(CONFIG, provenance=False)
    (plain,) = classify_items([item("gen.jpg", signed)], domain_engine, TINY, LIMITS, off)
    assert plain.provenance is None


def test_runs_on_shared_pools_start_no_threads_and_answer_the_same(
    engine: InferenceEngine,
) -> None:
    items = [item(f"{i}.png", encode("PNG", seed=i)) for i in range(6)] + [
        InputItem("mem.jpg", lambda: JPEG, in_memory=True, size=len(JPEG)),
        failing("gone.png", ImageFailure(ErrorCode.NOT_FOUND, "no such object")),
    ]
    own = classify(engine, items)
    before = threading.active_count()
    pools = PipelinePools.start(fetch_threads=4, decode_threads=2)
    try:
        for _ in range(6):
            assert list(classify_items(items, engine, TINY, LIMITS, CONFIG, pools)) == own
            # every thread the runs used is one of the pools' six
            assert threading.active_count() - before <= 4 + 2
        names = {t.name.split("_")[0] for t in threading.enumerate()}
        assert {"fetch", "decode"} <= names
    finally:
        pools.close()
