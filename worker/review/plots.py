"""The review report's figures; the numbers they draw come from ``worker.review.metrics``.

Each ``*_png`` function draws one matplotlib figure with the Agg renderer and returns
PNG bytes. Figures are built with ``matplotlib.figure.Figure``, never ``pyplot``: no
global figure registry, no GUI backend, so reports can be rendered from worker threads.
Every title says how many images the figure covers.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from worker.review.metrics import Reliability, Roc

_FIGSIZE = (4.2, 3.4)
_DPI = 100


def confusion_matrix_png(matrix: np.ndarray, labels: Sequence[str]) -> bytes:
    """Counts, true labels as rows; the title gives their sum."""
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
    axes.set_title(f"Confusion matrix, n = {int(matrix.sum())}")
    return _png(figure)


def roc_png(roc: Roc, n: int) -> bytes:
    """The curve with its AUC, for ``n`` images with a true label."""
    figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(roc.fpr, roc.tpr, drawstyle="default", label=f"AUC = {roc.auc:.3f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(f"ROC, positive = {roc.positive}, n = {n}")
    axes.legend(loc="lower right")
    return _png(figure)


def reliability_png(reliability: Reliability) -> bytes:
    """Accuracy per confidence bin against the diagonal, with the ECE that averages the gaps."""
    counts = reliability.counts
    figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    width = 1.0 / len(counts)
    centres = (np.arange(len(counts)) + 0.5) * width
    filled = counts > 0
    bars = axes.bar(
        centres[filled],
        reliability.accuracy[filled],
        width=width,
        edgecolor="black",
        label="accuracy",
    )
    # A bin of 3 images draws as tall a bar as one of 300: say how many each holds.
    axes.bar_label(bars, labels=[str(n) for n in counts[filled]], fontsize=6, padding=1)
    mean_confidence = reliability.mean_confidence[filled]
    axes.plot(mean_confidence, mean_confidence, "o", color="tab:red", ms=3)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="calibrated")
    axes.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence (bar labels: images)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"Reliability, ECE = {reliability.ece:.3f}, n = {int(counts.sum())}")
    axes.legend(loc="upper left")
    return _png(figure)


def per_class_accuracy_png(accuracy: Mapping[str, float], seen: Mapping[str, int]) -> bytes:
    """Recall of each true label; each bar says of how many images."""
    figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    labels = list(accuracy)
    bars = axes.bar(labels, [accuracy[label] for label in labels], color="tab:green")
    axes.bar_label(bars, labels=[f"{accuracy[label]:.1%} of {seen[label]}" for label in labels])
    axes.set(ylim=(0, 1.1), ylabel="accuracy (recall)")
    axes.set_title("Per-class accuracy")
    axes.tick_params(axis="x", labelrotation=30)
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()
