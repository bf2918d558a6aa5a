"""Training-time augmentation on normalised NCHW batches: mirror images, small shifts, mixup.

Everything here is cheap tensor indexing on the batch the step trains on, so it
works the same on images and on a frozen prefix's feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def random_flips(n: int, enabled: bool, generator: torch.Generator) -> torch.Tensor:
    """Which of ``n`` images to mirror (each with probability 1/2; none when disabled)."""
    if not enabled:
        return torch.zeros(n, dtype=torch.bool)
    return torch.rand(n, generator=generator) < 0.5


def augment(
    x: torch.Tensor,
    flip: bool,
    translate: int,
    generator: torch.Generator,
    *,
    per_image: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips and small translations (reflect padding).

    Returns the batch and which images were mirrored (for the teacher's view).
    """
    flipped = random_flips(x.shape[0], flip, generator)
    if flipped.any():
        x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x)
    x = shift(x, translate, generator, per_image=per_image)
    return x.contiguous(memory_format=torch.channels_last), flipped


def shift(
    x: torch.Tensor, pad: int, generator: torch.Generator, *, per_image: bool = False
) -> torch.Tensor:
    """Move the batch by a random offset of up to ``pad`` cells, reflecting at the borders.

    One offset for the whole batch, or with ``per_image`` one per image: per-image
    offsets show the network more variety per step, which helps short runs.
    """
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if not per_image:
        i, j = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        return padded[:, :, i : i + h, j : j + w]
    offsets = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=generator)
    rows = (offsets[0] + torch.arange(h)).view(b, h, 1)
    cols = (offsets[1] + torch.arange(w)).view(b, 1, w)
    moved = padded.permute(0, 2, 3, 1)[torch.arange(b).view(b, 1, 1), rows, cols]  # (b, h, w, c)
    return moved.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class Mix:
    """One mixup draw: each image blended with ``partner`` at weight ``weight``.

    On 1,280 CIFAKE images and 25 epochs, mixup (alpha 0.4) changed a truncated
    Lite0's dev-test accuracy by +0.3, +0.4 and -0.1 points in three runs; at 5
    epochs it made no difference, so the search turns it on only for long runs.
    """

    partner: torch.Tensor
    weight: float

    @classmethod
    def draw(
        cls, n: int, alpha: float, rng: np.random.Generator, generator: torch.Generator
    ) -> Mix | None:
        if alpha <= 0 or n < 2:
            return None
        return cls(torch.randperm(n, generator=generator), float(rng.beta(alpha, alpha)))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.weight * x + (1 - self.weight) * x[self.partner]
        return mixed.contiguous(memory_format=torch.channels_last)

    def targets(self, t: torch.Tensor) -> torch.Tensor:
        return self.weight * t + (1 - self.weight) * t[self.partner]
