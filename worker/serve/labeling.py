"""The label queue: unlabelled images, those the production model is least sure of first.

A label helps most where the model is unsure (uncertainty sampling, the simplest
active-learning rule): an image it already scores 0.99 teaches it little. The queue
is ordered by ``uncertainty`` of the dataset model's ``production`` version (the
default model's when the dataset's model has none yet), ties by arrival, newest
first. Without any model to score with, the queue is plain newest-first.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts import ImageResult, ModelId
from worker.serve.datasets import model_of
from worker.serve.db import Dataset, DatasetItem
from worker.serve.predictions import DatasetPredictions, uncertainty


@dataclass(frozen=True)
class QueueEntry:
    """One image to label and what the model said of it (None: not scored)."""

    item: DatasetItem
    result: ImageResult | None

    @property
    def uncertainty(self) -> float | None:
        return None if self.result is None else uncertainty(self.result)


@dataclass(frozen=True)
class LabelQueue:
    """The ordered unlabelled images and the model version that ordered them."""

    entries: list[QueueEntry]
    model: ModelId | None

    def __len__(self) -> int:
        return len(self.entries)


def label_queue(
    dataset: Dataset,
    unlabelled: list[DatasetItem],
    predictions: DatasetPredictions,
    default_model: str,
) -> LabelQueue:
    """``unlabelled`` (a dataset's images without a label), most uncertain first."""
    names = [model_of(dataset), default_model]
    model = predictions.first_available(names) if unlabelled else None
    if model is None:
        ordered = sorted(unlabelled, key=lambda item: (-item.added_at, item.key))
        return LabelQueue([QueueEntry(item, None) for item in ordered], None)
    results = predictions.predict(dataset, model, unlabelled)
    entries = [QueueEntry(item, results.get(item.key)) for item in unlabelled]
    entries.sort(key=_queue_order)
    return LabelQueue(entries, model)


def _queue_order(entry: QueueEntry) -> tuple[float, float, str]:
    doubt = entry.uncertainty
    return (-(doubt if doubt is not None else -1.0), -entry.item.added_at, entry.item.key)
