"""The review report's figures and the numbers behind them.

Each ``*_png`` function draws one matplotlib figure with the Agg renderer and returns
PNG bytes. Figures are built with ``matplotlib.figure.Figure``, never ``pyplot``: no
global figure registry, no GUI backend, so reports can be rendered from worker threads.
ROC is computed here with numpy (no scikit-learn in the image for one curve).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from worker.review.evaluation import ECE_BINS

_FIGSIZE = (4.2, 3.4)
_DPI = 100


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


# --- figures -------------------------------------------------------------------------------


def confusion_matrix_png(matrix: np.ndarray, labels: Sequence[str]) -> bytes:
    figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=30, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Confusion matrix")
    return _png(figure)


def roc_png(fpr: np.ndarray, tpr: np.ndarray, auc: float, positive_label: str) -> bytes:
    figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(fpr, tpr, drawstyle="default", label=f"AUC = {auc:.3f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(f"ROC, positive = {positive_label}")
    axes.legend(loc="lower right")
    return _png(figure)


def reliability_png(
    mean_confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, ece: float
) -> bytes:
    figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    width = 1.0 / len(counts)
    centres = (np.arange(len(counts)) + 0.5) * width
    filled = counts > 0
    axes.bar(centres[filled], accuracy[filled], width=width, edgecolor="black", label="accuracy")
    axes.plot(mean_confidence[filled], mean_confidence[filled], "o", color="tab:red", ms=3)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="calibrated")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    axes.set_title(f"Reliability, ECE = {ece:.3f}")
    axes.legend(loc="upper left")
    return _png(figure)


def per_class_accuracy_png(accuracy: Mapping[str, float]) -> bytes:
    figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    labels = list(accuracy)
    bars = axes.bar(labels, [accuracy[label] for label in labels], color="tab:green")
    axes.bar_label(bars, labels=[f"{accuracy[label]:.1%}" for label in labels])
    axes.set(ylim=(0, 1.1), ylabel="accuracy (recall)")
    axes.set_title("Per-class accuracy")
    axes.tick_params(axis="x", labelrotation=30)
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()
