"""Precise BatchNorm: running statistics recomputed with the final weights.

Running statistics are a moving average over the last few dozen steps, taken
while the weights were still moving. In short fine-tuning runs (a few hundred
steps from ImageNet statistics) they lag the final weights so much that
eval-mode predictions can collapse onto one class: on 1,280 CIFAKE images, 3
epochs of truncated Lite0 scored 58-86 % without this pass and 90-92 % with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

PRECISE_BN_IMAGES = 1024
"""Enough images for stable BatchNorm means and variances; more only costs time."""

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


def spread(rows: Rows, limit: int = PRECISE_BN_IMAGES) -> Rows:
    """At most about ``limit`` rows, evenly spread over ``rows`` (all of them if fewer)."""
    if len(rows) <= limit:
        return rows
    return rows[:: math.ceil(len(rows) / limit)]


@torch.no_grad()
def precise_batchnorm(
    owner: nn.Module, forward: Callable[[torch.Tensor], Any], batches: Iterable[torch.Tensor]
) -> None:
    """Set the running statistics of ``owner``'s BatchNorm layers to their mean over ``batches``.

    ``forward`` runs whatever computation feeds those layers (``owner`` itself,
    or a larger network it is part of); each batch weighs the same. ``owner``
    is left in eval mode with its layers' momenta restored.
    """
    layers = [m for m in owner.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over every batch below
    owner.train()
    for batch in batches:
        forward(batch)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    owner.eval()


def recalibrate_batchnorm(
    net: nn.Module,
    images: np.ndarray,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 256,
) -> None:
    """Precise BN for a whole network over uint8 NHWC ``images`` (an even spread of them).

    One forward pass over the training images costs about a third of an epoch
    on small sets; on large ones an evenly spread ``PRECISE_BN_IMAGES`` stand
    in for all of them.
    """
    precise_batchnorm(net, net, normalised_batches(spread(images), normalise, batch_size))


def normalised_batches(
    images: np.ndarray, normalise: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> Iterator[torch.Tensor]:
    """uint8 NHWC ``images`` in order, ``batch_size`` at a time, normalised to float NCHW."""
    for start in range(0, len(images), batch_size):
        yield normalise(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
