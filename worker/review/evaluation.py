"""Metrics that go into model cards: accuracy, per-class accuracy, calibration.

Expected calibration error (ECE) uses 15 equal-width confidence bins over the
predicted label's probability, the usual definition (Guo et al., 2017). This
module needs only numpy, so reports can use it without importing torch.
"""

from __future__ import annotations

import itertools

import numpy as np

from contracts import EvaluationMetrics

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return probs


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """|accuracy - confidence| averaged over confidence bins, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def evaluation_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    dataset: str,
    accuracy_std: float | None = None,
) -> EvaluationMetrics:
    """Accuracy, per-class accuracy (recall of each true label) and ECE of calibrated probs."""
    predicted = probs.argmax(axis=1)
    per_class = {
        name: float((predicted[labels == k] == k).mean())
        for k, name in enumerate(label_names)
        if (labels == k).any()
    }
    return EvaluationMetrics(
        dataset=dataset,
        n=len(labels),
        accuracy=float((predicted == labels).mean()),
        per_class_accuracy=per_class,
        ece=expected_calibration_error(probs, labels),
        accuracy_std=accuracy_std,
    )
