"""The label queue: unlabelled images, those the production model is least sure of first.

A label helps most where the model is unsure (uncertainty sampling, the simplest
active-learning rule): an image it already scores 0.99 teaches it little. The queue
is ordered by ``uncertainty`` of the dataset model's ``production`` version (the
default model's when the dataset's model has none yet), ties by arrival, newest
first. Without any model to score with, the queue is plain newest-first.

A page view scores at most ``MAX_SCORED`` images, the newest unlabelled ones (those
scored before are read back, not scored again), so the first view of a dataset of a
million unlabelled images costs seconds, not an hour; labelling them moves the
window on to older images.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts import ImageResult, ModelId
from worker.serve.datasets import model_of
from worker.serve.db import Dataset, DatasetItem
from worker.serve.predictions import DatasetPredictions, uncertainty

MAX_SCORED = 5000
"""Unlabelled images one queue orders at most (newest first)."""


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
    newest = sorted(unlabelled, key=lambda item: (-item.added_at, item.key))[:MAX_SCORED]
    model = predictions.first_available(names) if newest else None
    if model is None:
        return LabelQueue([QueueEntry(item, None) for item in newest], None)
    results = predictions.predict(dataset, model, newest)
    entries = [QueueEntry(item, results.get(item.key)) for item in newest]
    entries.sort(key=_queue_order)
    return LabelQueue(entries, model)


def _queue_order(entry: QueueEntry) -> tuple[float, float, str]:
    doubt = entry.uncertainty
    return (-(doubt if doubt is not None else -1.0), -entry.item.added_at, entry.item.key)
