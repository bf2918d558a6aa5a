"""The numbers a review reports: counts, accuracy, confusion matrix, ROC, calibration.

``review_metrics`` computes them once over a whole result set; the HTML report and the
terminal summary both print from it, so they cannot disagree, and neither depends on
which images a filter chose to list. Only numpy is needed here (the figures that draw
these numbers live in ``worker.review.plots``); ROC is computed with numpy, no
scikit-learn in the image for one curve.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contracts import ImageResult
from worker.classify.tally import ResultTally
from worker.review.evaluation import ECE_BINS, expected_calibration_error


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1).

    ``scores`` are the positive class's probabilities, ``positive`` says which rows
    truly are positive. Tied scores form one step (a diagonal segment), so a constant
    score gives AUC 0.5, not a number that depends on row order. Raises ``ValueError``
    when either class is absent: the curve is then undefined.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both positive and negative examples")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_each_threshold = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_pos = np.cumsum(positive)[last_of_each_threshold]
    false_pos = last_of_each_threshold + 1 - true_pos
    return np.r_[0.0, false_pos / n_neg], np.r_[0.0, true_pos / n_pos]


def area_under_curve(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under the points (x ascending), e.g. ROC AUC."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def confusion_matrix(
    true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """Counts with true labels as rows and predicted labels as columns, in ``labels`` order."""
    index = {label: k for k, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return matrix


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (NaN where a bin is empty).

    The bins are those of ``expected_calibration_error`` (equal width, ``(low, high]``),
    so the diagram shows exactly the gaps that the ECE printed beside it averages.
    """
    mean_confidence = np.full(bins, np.nan)
    accuracy = np.full(bins, np.nan)
    counts = np.zeros(bins, dtype=np.int64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for k, (low, high) in enumerate(itertools.pairwise(edges)):
        in_bin = (confidence > low) & (confidence <= high)
        counts[k] = int(in_bin.sum())
        if counts[k]:
            mean_confidence[k] = confidence[in_bin].mean()
            accuracy[k] = correct[in_bin].mean()
    return mean_confidence, accuracy, counts


@dataclass(frozen=True)
class Roc:
    """The ROC curve of one positive class and the area under it."""

    positive: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


@dataclass(frozen=True)
class Reliability:
    """Calibration of the predicted label's confidence: ECE and the diagram's bins."""

    ece: float
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class ReviewMetrics:
    """Everything a review states about a result set.

    The plots and accuracies need true labels: they cover the ``with_truth`` classified
    results that carry one (failed images have no prediction to judge). Without any,
    ``axis`` is empty and ``roc`` and ``reliability`` are None.
    """

    tally: ResultTally
    with_truth: int
    axis: list[str]
    """Labels of the confusion matrix's rows (true) and columns (predicted)."""
    confusion: np.ndarray
    roc: Roc | None
    roc_note: str | None
    """Why there is no ROC curve, when there are true labels but no curve."""
    reliability: Reliability | None

    @property
    def total(self) -> int:
        return self.tally.total

    @property
    def accuracy(self) -> float | None:
        return self.tally.accuracy()

    @property
    def per_class_accuracy(self) -> dict[str, float]:
        return self.tally.per_class_accuracy()


def review_metrics(
    results: Sequence[ImageResult], positive_label: str | None = None
) -> ReviewMetrics:
    """The metrics of ``results`` (all of them: a review's filters never narrow this).

    ``positive_label`` is the class whose score the ROC curve ranks by (default: the
    second label in sorted order, e.g. ``synthetic`` of real/synthetic).
    """
    tally = ResultTally()
    for result in results:
        tally.add(result)
    known = [r for r in results if r.error is None and r.true_label is not None]
    if not known:
        return ReviewMetrics(tally, 0, [], np.zeros((0, 0), dtype=np.int64), None, None, None)
    true = [r.true_label or "" for r in known]
    predicted = [r.label or "" for r in known]
    axis = sorted(set(true) | set(predicted))
    classes = sorted({label for r in known for label in r.scores or {}})
    probs = np.array([[(r.scores or {}).get(c, 0.0) for c in classes] for r in known])
    roc, roc_note = _roc(probs, classes, true, positive_label)
    targets = np.array([classes.index(t) if t in classes else -1 for t in true])
    ece = expected_calibration_error(probs, targets)
    bins = reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == targets)
    return ReviewMetrics(
        tally=tally,
        with_truth=len(known),
        axis=axis,
        confusion=confusion_matrix(true, predicted, axis),
        roc=roc,
        roc_note=roc_note,
        reliability=Reliability(ece, *bins),
    )


def _roc(
    probs: np.ndarray, classes: list[str], true: list[str], positive_label: str | None
) -> tuple[Roc | None, str | None]:
    """The ROC curve, or None and a sentence saying why there is none."""
    positive = positive_label or (classes[1] if len(classes) > 1 else None)
    if positive is None:
        return None, "No ROC curve: the model scored a single class."
    if positive not in classes:
        return None, f"No ROC curve: the model gave no scores for the positive class {positive}."
    try:
        fpr, tpr = roc_curve(probs[:, classes.index(positive)], np.array(true) == positive)
    except ValueError:
        return None, f"No ROC curve: it needs true labels both {positive} and not {positive}."
    return Roc(positive, fpr, tpr, area_under_curve(fpr, tpr)), None


def summary_rows(metrics: ReviewMetrics) -> list[tuple[str, str]]:
    """(name, value) rows of the counts and headline numbers, as the report's table and the
    terminal summary print them (one source, so the two always agree)."""
    tally = metrics.tally
    rows = [("results", str(tally.total)), ("classified", str(tally.labelled))]
    rows += [("failed", str(tally.failed))]
    rows += [(f"predicted {label}", str(n)) for label, n in sorted(tally.by_label.items())]
    rows += [(f"error {code.value}", str(n)) for code, n in sorted(tally.by_error.items())]
    if tally.out_of_domain:
        rows.append(("out of the model's domain (labelled or abstained)", str(tally.out_of_domain)))
    if tally.decided_by_provenance:
        rows.append(("labelled by a validated C2PA claim", str(tally.decided_by_provenance)))
    accuracy = metrics.accuracy
    if accuracy is None:
        rows.append(("accuracy", "unknown: no true labels"))
    else:
        correct = sum(tally.correct_by_true_label.values())
        rows.append(
            ("accuracy", f"{accuracy:.2%} ({correct} of {metrics.with_truth} with a true label)")
        )
        rows += [
            (
                f"accuracy on {label}",
                f"{value:.2%} ({tally.correct_by_true_label[label]} of "
                f"{tally.seen_by_true_label[label]})",
            )
            for label, value in metrics.per_class_accuracy.items()
        ]
    if metrics.roc is not None:
        rows.append((f"ROC AUC, positive {metrics.roc.positive}", f"{metrics.roc.auc:.3f}"))
    if metrics.reliability is not None:
        rows.append((f"ECE, {ECE_BINS} bins", f"{metrics.reliability.ece:.3f}"))
    rows.append(("models", ", ".join(f"{m.name}@{m.version}" for m in tally.models) or "-"))
    return rows
