"""Temperature scaling: one scalar T fitted on held-back logits.

Minimising the negative log-likelihood of softmax(logits / T) over T changes
confidences, never the predicted label, and is the calibration method that
held up best in Guo et al. (2017). The fitted T goes into the model card and
the inference engine divides logits by it.

A retrain ships a mean of several networks with mirrored views, which is less
sharp than any one of them: a temperature fitted on single fold models'
out-of-fold logits leaves that ensemble under-confident. So retrains fit T on
the shipped model's own held-out logits and report a cross-fitted ECE.
"""

from __future__ import annotations

import numpy as np
import torch

from worker.retrain.training.splits import stratified_split
from worker.review.evaluation import softmax


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


def cross_fitted_probabilities(logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each half's probabilities under the temperature fitted on the other half.

    When the temperature is fitted on the same images it is judged on, its ECE
    looks better than it is; scoring each half with the other half's
    temperature gives an honest figure for that recipe.
    """
    first, second = stratified_split(labels, 0.5, seed)
    probs = np.empty(logits.shape, dtype=np.float64)
    probs[first] = softmax(logits[first], fit_temperature(logits[second], labels[second]))
    probs[second] = softmax(logits[second], fit_temperature(logits[first], labels[first]))
    return probs
