"""Metrics that go into model cards: accuracy, per-class accuracy, calibration.

Expected calibration error (ECE) uses 15 equal-width confidence bins over the
predicted label's probability, the usual definition (Guo et al., 2017).
Temperature scaling fits one scalar T on held-back logits by minimising the
negative log-likelihood; it changes confidences, never the predicted label.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from contracts import EvaluationMetrics

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises NLL on these logits (bounded to [0.05, 20])."""
    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(np.exp(log_t.item()), 0.05, 20.0))


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
