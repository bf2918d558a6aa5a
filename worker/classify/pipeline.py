"""The classify pipeline shared by the CLI and the queue worker.

::

    items ─► fetch (fetch_concurrency threads) ─► decode + preprocess (decode_threads slots)
          ─► engine.submit (shared dynamic batcher) ─► ImageResult, in input order

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
from dataclasses import dataclass

from contracts import ErrorCode, ImageError, ImageResult, ModelRef
from worker.classify.inputs import InputItem
from worker.errors import ImageFailure, ModelError
from worker.imaging import ImageLimits, load_image_array
from worker.inference.batcher import BatchFailed
from worker.inference.engine import InferenceEngine
from worker.inference.model import Prediction
from worker.logs import get_logger
from worker.metrics import timed_stage
from worker.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """Concurrency limits of one pipeline run."""

    fetch_concurrency: int
    decode_threads: int
    window: int

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        return cls(
            fetch_concurrency=settings.fetch_concurrency,
            decode_threads=settings.decode_thread_count(),
            window=settings.fetch_concurrency + 2 * settings.max_batch,
        )


def classify_items(
    items: Iterable[InputItem],
    engine: InferenceEngine,
    model: ModelRef,
    limits: ImageLimits,
    config: PipelineConfig,
) -> Iterator[ImageResult]:
    """Yield one ``ImageResult`` per input item, in input order."""
    decode_slots = threading.BoundedSemaphore(config.decode_threads)

    def prepare(item: InputItem) -> Future[Prediction]:
        with timed_stage("fetch"):
            data = item.load()
        loaded = engine.model_for(model)
        with decode_slots, timed_stage("decode"):
            pixels = load_image_array(data, limits, loaded.card.preprocessing)
        del data
        return engine.submit(pixels, loaded)

    in_flight: deque[tuple[InputItem, Future[Future[Prediction]]]] = deque()
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
                yield _result_for(item, staged)
        finally:
            for _, staged in in_flight:
                staged.cancel()


def _result_for(item: InputItem, staged: Future[Future[Prediction]]) -> ImageResult:
    try:
        prediction = staged.result().result()
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
    return ImageResult(
        uri=item.uri,
        label=prediction.label,
        confidence=prediction.confidence,
        scores=prediction.scores,
        model=prediction.model,
        true_label=item.true_label,
    )


def _failed(item: InputItem, error: ImageError) -> ImageResult:
    return ImageResult(uri=item.uri, error=error, true_label=item.true_label)
