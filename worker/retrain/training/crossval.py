"""k-fold cross-validation: out-of-fold predictions for every training image.

Each fold's model is trained on the other folds and predicts its own fold, so
every image gets exactly one prediction from a model that never saw it. Those
out-of-fold (OOF) logits give the CV accuracy per class (and its spread across
folds), fit the temperature, and feed the review report; the fold models
themselves are kept so the final model can average them with the full fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from worker.retrain.training.candidates import IMAGENET_NORMALISATION, Candidate
from worker.retrain.training.dataset import LabelledImages
from worker.retrain.training.frozen import PrefixCache
from worker.retrain.training.loop import predict_logits, train_classifier


@dataclass
class FoldResult:
    """One trained fold: what ran (epochs included), its validation indices, logits, model."""

    candidate: Candidate
    index: int
    validation: np.ndarray
    logits: np.ndarray
    model: nn.Module
    seconds: float
    predict_seconds: float = 0.0
    """Of ``seconds``, the time predicting the validation images (each with its mirror)."""

    def accuracy(self, labels: np.ndarray) -> float:
        return float((self.logits.argmax(1) == labels[self.validation]).mean())


@dataclass
class CrossValidation:
    """A candidate's folds so far (a search may stop after the first few)."""

    candidate: Candidate
    folds: list[np.ndarray]
    results: list[FoldResult]

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.folds)

    def mean_accuracy(self, labels: np.ndarray) -> float:
        return float(np.mean([r.accuracy(labels) for r in self.results]))

    def accuracy_std(self, labels: np.ndarray) -> float:
        return float(np.std([r.accuracy(labels) for r in self.results]))

    def oof_logits(self, n: int, num_classes: int) -> np.ndarray:
        """(n, classes) logits; rows of folds not run yet are NaN."""
        out = np.full((n, num_classes), np.nan, dtype=np.float32)
        for result in self.results:
            out[result.validation] = result.logits
        return out


def run_fold(
    candidate: Candidate,
    data: LabelledImages,
    folds: list[np.ndarray],
    index: int,
    *,
    deadline: float | None = None,
    on_epoch: Callable[..., None] | None = None,
    prefix: PrefixCache | None = None,
) -> FoldResult:
    """Train on every fold but ``index``; predict fold ``index``.

    ``prefix`` caches a frozen prefix's features of all of ``data`` (see ``PrefixCache``).
    """
    started = time.monotonic()
    validation = folds[index]
    train = np.concatenate([f for i, f in enumerate(folds) if i != index])
    net = candidate.build(len(data.label_names))
    train_classifier(
        net,
        data.images[train],
        data.labels[train],
        IMAGENET_NORMALISATION,
        candidate.config,
        deadline=deadline,
        on_epoch=on_epoch,
        prefix=prefix.rows(train) if prefix is not None else None,
    )
    predicting = time.monotonic()
    logits = predict_logits(net, data.images[validation], IMAGENET_NORMALISATION, flip_tta=True)
    done = time.monotonic()
    return FoldResult(
        candidate, index, validation, logits, net, done - started, predict_seconds=done - predicting
    )
