"""Temperature scaling: one scalar T fitted on held-back logits.

Minimising the negative log-likelihood of softmax(logits / T) over T changes
confidences, never the predicted label, and is the calibration method that
held up best in Guo et al. (2017). The fitted T goes into the model card and
the inference engine divides logits by it.
"""

from __future__ import annotations

import numpy as np
import torch


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
