"""The classify pipeline shared by the CLI and the queue worker.

::

    items ─► fetch + decode + provenance (fetch_concurrency threads,       objects
                                             decode_threads at once)
          ─► decode + provenance in chunks (decode_threads threads)     bytes in memory
          ─► engine.submit (shared dynamic batcher)
          ─► domain check + policy (verdict) ─► ImageResult, in input order

Items that must be read (S3 objects, files) get one fetch task each, so many
GETs wait on the network at once. Items whose bytes are already in memory (tar
members, read as the archive streams by) are decoded in chunks of ``chunk`` per
task: for a 32x32 JPEG, which decodes in about 20 µs, handing each image to a
thread would cost as much as decoding it (decoding them in the reading thread
instead measured 10 % slower: the decode threads overlap it with tar parsing).
Fetching, decoding and inference overlap; each hand-off is bounded.

Memory is bounded by a sliding window of in-flight images: the input iterator
is pulled only as results leave, so a 100,000-image prefix streams through
without ever being held at once; decoded pixels are bounded process-wide by
``ImageLimits.pixel_budget``. Each image's failure becomes its own
``ImageResult.error``; nothing here fails the whole stream except the input
iterator itself (e.g. a listing that cannot be read).

``urgent`` (interactive jobs) puts the images ahead of every bulk image waiting
for the shared batcher; bulk runs pause between images while interactive work is
in flight (``worker.classify.priority``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from contracts import ErrorCode, ImageError, ImageResult, ModelCard, ModelRef, Provenance
from worker.classify.inputs import InputItem
from worker.classify.priority import PRIORITY
from worker.classify.verdict import DomainPolicy, make_result
from worker.errors import ImageFailure, ModelError
from worker.imaging import ImageLimits, SourceInfo, load_image
from worker.inference.batcher import BatchFailed
from worker.inference.prediction import Prediction
from worker.logs import get_logger
from worker.metrics import timed_stage
from worker.provenance.reader import ProvenanceReader
from worker.settings import Settings

if TYPE_CHECKING:  # torch loads with the engine, not with this module
    from worker.inference.engine import InferenceEngine

log = get_logger(__name__)

DECODE_CHUNK = 32
"""In-memory images decoded per task at most: amortises the hand-off for small images."""

WINDOW_BYTES = 64 * 1024 * 1024
"""Default of ``PipelineConfig.window_bytes``: 2,000 CIFAKE images are 2 MB, 64 MB photos are 64."""

CHUNK_BYTES = 256 * 1024
"""A chunk closes once it holds this many bytes, so large images still spread over threads."""


@dataclass(frozen=True)
class PipelineConfig:
    """Concurrency limits of one pipeline run, its lane in the shared batcher, its domain
    policy and provenance reading."""

    fetch_concurrency: int
    decode_threads: int
    window: int
    """Images in flight at most (read ahead of the one the caller waits for)."""
    policy: DomainPolicy = field(default_factory=DomainPolicy)
    provenance: bool = True
    trust_anchors: Path | None = None
    urgent: bool = False
    chunk: int = DECODE_CHUNK
    window_bytes: int = WINDOW_BYTES
    """Bytes of in-memory images (tar members) in flight at most, however large they are."""

    @classmethod
    def from_settings(cls, settings: Settings, urgent: bool = False) -> PipelineConfig:
        return cls(
            fetch_concurrency=settings.fetch_concurrency,
            decode_threads=settings.decode_thread_count(),
            # Room for a full batch in each of two runners, one forming and one decoding:
            # with only two, batches of a model-bound job ran at 46 images of 64.
            window=settings.fetch_concurrency + 4 * settings.max_batch,
            urgent=urgent,
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


_Outcome = _Staged | BaseException
"""An image's place in a batch, or why it never got one."""


@dataclass(frozen=True)
class PipelinePools:
    """Thread pools that many short pipeline runs share instead of starting their own.

    A run that owns its pools starts a thread for its first image and stops it at the
    end; for a one-image run (``synthdetect serve``'s invoke) that costs about as much as
    decoding a small image. Shared pools live as long as their owner, who closes them.
    """

    fetch: ThreadPoolExecutor
    decode: ThreadPoolExecutor

    @classmethod
    def start(cls, fetch_threads: int, decode_threads: int) -> PipelinePools:
        return cls(
            ThreadPoolExecutor(fetch_threads, thread_name_prefix="fetch"),
            ThreadPoolExecutor(decode_threads, thread_name_prefix="decode"),
        )

    def close(self) -> None:
        self.fetch.shutdown(wait=True, cancel_futures=True)
        self.decode.shutdown(wait=True, cancel_futures=True)


def classify_items(
    items: Iterable[InputItem],
    engine: InferenceEngine,
    model: ModelRef,
    limits: ImageLimits,
    config: PipelineConfig,
    pools: PipelinePools | None = None,
) -> Iterator[ImageResult]:
    """Yield one ``ImageResult`` per input item, in input order.

    ``pools``: shared thread pools; the run then starts no threads of its own, and the
    pools' sizes bound the fetches and decodes of every run that shares them.
    """
    decode_slots = threading.BoundedSemaphore(config.decode_threads)
    reader = provenance_reader(config.trust_anchors) if config.provenance else None
    pause: Callable[[], None] = _go_on if config.urgent else PRIORITY.yield_to_interactive

    def stage(data: bytes) -> _Staged:
        loaded = engine.model_for(model)
        with timed_stage("decode"):
            prepared = load_image(data, limits, loaded.card.preprocessing)
            provenance = reader.read(data) if reader is not None else None
        prediction = engine.submit(prepared.pixels, loaded, config.urgent)
        return _Staged(prediction, loaded.card, prepared.source, provenance)

    def fetch_and_stage(item: InputItem) -> list[_Outcome]:
        pause()
        try:
            with timed_stage("fetch"):
                data = item.load()
            with decode_slots:
                return [stage(data)]
        except ModelError:
            raise  # the job's model is unusable: a job-level failure
        except Exception as exc:  # noqa: BLE001 - this image's failure is its own result
            return [exc]

    def stage_chunk(chunk: list[InputItem]) -> list[_Outcome]:
        staged: list[_Outcome] = []
        for item in chunk:
            pause()
            try:
                staged.append(stage(item.load()))
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - as in fetch_and_stage
                staged.append(exc)
        return staged

    in_flight: deque[tuple[list[InputItem], int, Future[list[_Outcome]]]] = deque()
    queued = held = 0  # images and in-memory bytes in flight
    source = iter(items)
    pending: InputItem | None = None
    own = pools is None
    shared = pools or PipelinePools.start(config.fetch_concurrency, config.decode_threads)
    fetchers, decoders = shared.fetch, shared.decode
    try:
        while True:
            while queued < config.window and held < config.window_bytes:
                pause()
                item = pending or next(source, None)
                pending = None
                if item is None:
                    break
                if not item.in_memory:
                    in_flight.append(([item], 0, fetchers.submit(fetch_and_stage, item)))
                    queued += 1
                    continue
                chunk = [item]
                room = min(config.chunk, config.window - queued)
                size = item.size
                byte_room = min(CHUNK_BYTES, config.window_bytes - held)
                while len(chunk) < room and size < byte_room:
                    following = next(source, None)
                    if following is None:
                        break
                    if not following.in_memory:
                        pending = following
                        break
                    chunk.append(following)
                    size += following.size
                in_flight.append((chunk, size, decoders.submit(stage_chunk, chunk)))
                queued += len(chunk)
                held += size
            if not in_flight:
                return
            chunk, size, staged = in_flight.popleft()
            queued -= len(chunk)
            held -= size
            for item, outcome in zip(chunk, staged.result(), strict=True):
                yield _result_for(item, outcome, config.policy)
    finally:
        for _, _, staged in in_flight:
            staged.cancel()
        if own:
            fetchers.shutdown(wait=False, cancel_futures=True)
            decoders.shutdown(wait=False, cancel_futures=True)


def _go_on() -> None:
    """What an interactive pipeline does between images: nothing (it never yields)."""


def _result_for(item: InputItem, staged: _Outcome, policy: DomainPolicy) -> ImageResult:
    try:
        if isinstance(staged, BaseException):
            raise staged
        prediction = staged.prediction.result()
    except ImageFailure as failure:
        return _failed(item, failure.to_contract())
    except ModelError:
        raise  # the job's model is unusable: a job-level failure, not this image's
    except Exception as exc:
        log.error(
            "image_failed_unexpectedly",
            uri=item.uri,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        code = (
            ErrorCode.INFERENCE_FAILED if isinstance(exc, BatchFailed) else ErrorCode.INTERNAL_ERROR
        )
        return _failed(item, ImageError(code=code, message=f"{type(exc).__name__}: {exc}"))
    return make_result(
        uri=item.uri,
        prediction=prediction,
        card=staged.card,
        source=staged.source,
        provenance=staged.provenance,
        policy=policy,
        true_label=item.true_label,
    )


def _failed(item: InputItem, error: ImageError) -> ImageResult:
    return ImageResult(uri=item.uri, error=error, true_label=item.true_label)
