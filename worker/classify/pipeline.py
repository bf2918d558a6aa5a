"""The classify pipeline shared by the CLI and the queue worker.

::

    items ─► fetch (fetch_concurrency threads) ─► decode + preprocess + provenance
          (decode_threads slots) ─► engine.submit (shared dynamic batcher)
          ─► domain check + policy (verdict) ─► ImageResult, in input order

Memory is bounded by a sliding window of in-flight images: the input iterator
is pulled only as results leave, so a 100,000-image prefix streams through
without ever being held at once. Each image's failure becomes its own
``ImageResult.error``; nothing here fails the whole stream except the input
iterator itself (e.g. a listing that cannot be read).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from contracts import ErrorCode, ImageError, ImageResult, ModelCard, ModelRef, Provenance
from worker.classify.inputs import InputItem
from worker.classify.verdict import DomainPolicy, make_result
from worker.errors import ImageFailure, ModelError
from worker.imaging import ImageLimits, SourceInfo, load_image
from worker.inference.batcher import BatchFailed
from worker.inference.engine import InferenceEngine
from worker.inference.model import Prediction
from worker.logs import get_logger
from worker.metrics import timed_stage
from worker.provenance.reader import ProvenanceReader
from worker.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """Concurrency limits of one pipeline run, its domain policy and provenance reading."""

    fetch_concurrency: int
    decode_threads: int
    window: int
    policy: DomainPolicy = field(default_factory=DomainPolicy)
    provenance: bool = True
    trust_anchors: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        return cls(
            fetch_concurrency=settings.fetch_concurrency,
            decode_threads=settings.decode_thread_count(),
            window=settings.fetch_concurrency + 2 * settings.max_batch,
            policy=DomainPolicy.from_settings(settings),
            provenance=settings.provenance,
            trust_anchors=settings.c2pa_trust_anchors,
        )


@lru_cache(maxsize=4)
def provenance_reader(trust_anchors: Path | None) -> ProvenanceReader:
    """One reader per trust list and process (it keeps a C2PA context per thread)."""
    return ProvenanceReader(trust_anchors)


@dataclass(frozen=True)
class _Staged:
    """An image on its way through the batcher, with what its result needs besides scores."""

    prediction: Future[Prediction]
    card: ModelCard
    source: SourceInfo
    provenance: Provenance | None


def classify_items(
    items: Iterable[InputItem],
    engine: InferenceEngine,
    model: ModelRef,
    limits: ImageLimits,
    config: PipelineConfig,
) -> Iterator[ImageResult]:
    """Yield one ``ImageResult`` per input item, in input order."""
    decode_slots = threading.BoundedSemaphore(config.decode_threads)
    reader = provenance_reader(config.trust_anchors) if config.provenance else None

    def prepare(item: InputItem) -> _Staged:
        with timed_stage("fetch"):
            data = item.load()
        loaded = engine.model_for(model)
        with decode_slots, timed_stage("decode"):
            prepared = load_image(data, limits, loaded.card.preprocessing)
            provenance = reader.read(data) if reader is not None else None
        del data
        return _Staged(
            engine.submit(prepared.pixels, loaded), loaded.card, prepared.source, provenance
        )

    in_flight: deque[tuple[InputItem, Future[_Staged]]] = deque()
    source = iter(items)
    with ThreadPoolExecutor(config.fetch_concurrency, thread_name_prefix="fetch") as pool:
        try:
            while True:
                while len(in_flight) < config.window:
                    item = next(source, None)
                    if item is None:
                        break
                    in_flight.append((item, pool.submit(prepare, item)))
                if not in_flight:
                    return
                item, staged = in_flight.popleft()
                yield _result_for(item, staged, config.policy)
        finally:
            for _, staged in in_flight:
                staged.cancel()


def _result_for(item: InputItem, staged: Future[_Staged], policy: DomainPolicy) -> ImageResult:
    try:
        ready = staged.result()
        prediction = ready.prediction.result()
    except ImageFailure as failure:
        return _failed(item, failure.to_contract())
    except ModelError:
        raise  # the job's model is unusable: a job-level failure, not this image's
    except Exception as exc:
        log.exception("image_failed_unexpectedly", uri=item.uri)
        code = (
            ErrorCode.INFERENCE_FAILED if isinstance(exc, BatchFailed) else ErrorCode.INTERNAL_ERROR
        )
        return _failed(item, ImageError(code=code, message=f"{type(exc).__name__}: {exc}"))
    return make_result(
        uri=item.uri,
        prediction=prediction,
        card=ready.card,
        source=ready.source,
        provenance=ready.provenance,
        policy=policy,
        true_label=item.true_label,
    )


def _failed(item: InputItem, error: ImageError) -> ImageResult:
    return ImageResult(uri=item.uri, error=error, true_label=item.true_label)
