"""The inference engine of one process: model provider + one shared dynamic batcher.

Every job in the process submits its images here, so concurrent small jobs end
up in the same batches. A batch may mix models (during an alias swap, or jobs
pinned to different versions); it is split into one model call per model.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from contracts import ModelRef
from worker.inference.batcher import BatchEvent, BatchStats, DynamicBatcher
from worker.inference.device import ExecutionPlan, select_device
from worker.inference.model import LoadedModel
from worker.inference.prediction import Prediction
from worker.inference.provider import ModelProvider
from worker.inference.registry import ModelRegistry
from worker.settings import Settings
from worker.storage import Storage


@dataclass(frozen=True)
class ScoringRequest:
    """Preprocessed pixels (H, W, 3 uint8) and the model they were prepared for."""

    pixels: np.ndarray
    model: LoadedModel


def score_requests(requests: list[ScoringRequest]) -> list[Prediction]:
    """Run a batch: one forward pass per distinct model, results back in request order."""
    results: dict[int, Prediction] = {}
    by_model: dict[int, list[int]] = {}
    for i, request in enumerate(requests):
        by_model.setdefault(id(request.model), []).append(i)
    for indices in by_model.values():
        model = requests[indices[0]].model
        predictions = model.predict(np.stack([requests[i].pixels for i in indices]))
        for i, prediction in zip(indices, predictions, strict=True):
            results[i] = prediction
    return [results[i] for i in range(len(requests))]


class InferenceEngine:
    """``model_for`` picks the model for an image; ``submit`` scores it in a shared batch."""

    def __init__(
        self,
        provider: ModelProvider,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[BatchEvent], None] | None = None,
        runners: int = 1,
        yield_bulk: Callable[[], None] | None = None,
    ) -> None:
        self.provider = provider
        self._batcher: DynamicBatcher[ScoringRequest, Prediction] = DynamicBatcher(
            score_requests,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            on_batch=on_batch,
            name="inference-batcher",
            runners=runners,
            urgent_runners=1,
            yield_bulk=yield_bulk,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        storage: Storage,
        on_batch: Callable[[BatchEvent], None] | None = None,
        yield_bulk: Callable[[], None] | None = None,
    ) -> InferenceEngine:
        """Build the process's engine; CUDA is initialised here, never at import.

        ``yield_bulk`` is called before each batch of bulk images (see ``DynamicBatcher``).
        """
        plan = ExecutionPlan.choose(
            select_device(settings.device),
            runners=settings.inference_threads,
            torch_threads=settings.torch_threads,
            precision=settings.cuda_precision,
        )
        plan.apply()
        provider = ModelProvider(
            ModelRegistry.from_settings(settings, storage),
            plan.device,
            autocast_dtype=plan.autocast_dtype,
            alias_ttl_s=settings.alias_poll_s,
        )
        return cls(
            provider,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.batch_queue_size,
            on_batch=on_batch,
            runners=plan.runners,
            yield_bulk=yield_bulk,
        )

    @property
    def stats(self) -> BatchStats:
        return self._batcher.stats

    @property
    def alive(self) -> bool:
        """Whether the shared batcher's thread runs (the liveness probe asks)."""
        return self._batcher.alive

    def model_for(self, ref: ModelRef) -> LoadedModel:
        """The model the next image for ``ref`` must be preprocessed for and scored by."""
        return self.provider.get(ref)

    def submit(
        self, pixels: np.ndarray, model: LoadedModel, urgent: bool = False
    ) -> Future[Prediction]:
        """Queue one preprocessed image; blocks while the batch queue is full.

        ``urgent`` (interactive jobs) goes ahead of every queued bulk image.
        """
        return self._batcher.submit(ScoringRequest(pixels, model), urgent)

    def close(self, discard_queued: bool = False) -> None:
        """Finish (or, with ``discard_queued``, drop) queued images; stop the batcher threads."""
        self._batcher.close(discard_queued=discard_queued)
