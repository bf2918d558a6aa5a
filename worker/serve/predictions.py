"""A model version's predictions on a dataset's images, computed once and kept.

The label queue and the review page both need every image of a dataset scored by
one model version. Scoring goes through the classify pipeline and the process's
shared engine (the same batches as invoke requests), pinned to the version the
alias named when the request came, so one page never mixes two versions. Results
are kept in memory by (version, image id): a dataset's images never change their
bytes (uploads are named by content; S3 references by address), so a kept
prediction stays right until the alias moves, and then the new version scores
afresh. Labels are joined at read time, never kept, so relabelling shows at once.

Each fresh prediction is also written to the image's row in the console database
(``set_predictions``), so after a restart, or on another replica, a version's
predictions are read back instead of scored again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

from contracts import ImageResult, ModelId, ModelRef
from worker.classify.inputs import object_item
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.errors import ModelError, StorageError
from worker.imaging import ImageLimits
from worker.serve.db import ConsoleStore, Dataset, DatasetItem
from worker.settings import Settings
from worker.storage import Storage

if TYPE_CHECKING:
    from worker.inference.engine import InferenceEngine

MAX_KEPT_VERSIONS = 4
"""Versions whose predictions are kept; older ones are dropped first."""


class DatasetPredictions:
    """Scores dataset images with the engine and keeps the results per model version."""

    def __init__(
        self,
        engine: InferenceEngine,
        settings: Settings,
        storage: Storage,
        limits: ImageLimits,
        store: ConsoleStore,
    ) -> None:
        self.engine = engine
        self.store = store
        self.storage = storage
        self.limits = limits
        self.config = PipelineConfig.from_settings(settings)
        self._kept: dict[ModelId, dict[str, ImageResult]] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: ModelRef) -> ModelId:
        """The version ``ref`` names now (``ModelError`` if none)."""
        return self.engine.provider.resolve(ref)

    def first_available(self, names: Sequence[str]) -> ModelId | None:
        """The production version of the first of ``names`` that has one."""
        for name in names:
            try:
                return self.resolve(ModelRef(name=name))
            except (ModelError, StorageError):
                continue
        return None

    def predict(
        self, dataset: Dataset, model: ModelId, items: Sequence[DatasetItem]
    ) -> dict[str, ImageResult]:
        """Each item's result by item key, ``true_label`` set from the item's label now."""
        with self._lock:
            kept = self._kept.setdefault(model, {})
            for item in items:
                if item.key not in kept and item.prediction:
                    stored = _stored(item.prediction, model)
                    if stored is not None:
                        kept[item.key] = stored
            missing = [item for item in items if item.key not in kept]
        if missing:
            inputs = [object_item(self.storage, i.uri, self.limits.max_bytes) for i in missing]
            ref = ModelRef(name=model.name, version=model.version)
            scored = classify_items(inputs, self.engine, ref, self.limits, self.config)
            fresh = {item.key: result for item, result in zip(missing, scored, strict=True)}
            self.store.set_predictions(
                dataset.id,
                {key: r.model_dump(mode="json") for key, r in fresh.items()},
            )
            with self._lock:
                kept = self._kept.setdefault(model, {})
                kept.update(fresh)
                while len(self._kept) > MAX_KEPT_VERSIONS:
                    del self._kept[next(iter(self._kept))]
        return {
            item.key: _with_label(kept[item.key], item.label) for item in items if item.key in kept
        }


def _stored(prediction: dict[str, object], model: ModelId) -> ImageResult | None:
    """A stored prediction, if it is ``model``'s (an older version's is not used)."""
    try:
        result = ImageResult.from_json_value(prediction)
    except (ValidationError, TypeError):
        return None
    return result if result.model == model else None


def _with_label(result: ImageResult, label: str | None) -> ImageResult:
    if result.true_label == label:
        return result
    return result.model_copy(update={"true_label": label})


def uncertainty(result: ImageResult) -> float:
    """How unsure the model is: 1 minus the margin between its top two scores.

    1.0 is a coin toss, 0.0 certainty. Abstentions keep their scores, so they are
    ranked like any other image; an image the model could not score (no scores)
    ranks last, as labelling it teaches the model nothing about its doubts.
    """
    if not result.scores:
        return -1.0
    top = sorted(result.scores.values(), reverse=True)
    second = top[1] if len(top) > 1 else 0.0
    return 1.0 - (top[0] - second)
