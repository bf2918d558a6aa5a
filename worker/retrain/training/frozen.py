"""Training with a backbone's first blocks frozen, on their outputs computed once.

On 32 px images the stem and the first three blocks of EfficientNet-Lite0
work at full and half resolution and cost two thirds of a training step;
ImageNet edges and textures are what they compute, and CIFAKE needs them
barely changed. Frozen, they run once per image (and once for its mirror
image) instead of once per epoch, and the rest of the network trains about
three times as many epochs in the same time (``scripts/bench_recipes.py``).

Augmentation moves into feature space: a mirrored image's features are cached
too, and a translation by ``s`` pixels becomes a shift of the feature map by
``s / stride`` cells (exact for convolutions, up to the borders). Mixup mixes
feature maps ("manifold mixup"). The frozen BatchNorm layers first get the
statistics of the training images ("precise BN": with ImageNet's statistics
instead, dev-test accuracy fell by 1.2 points), so the cached features are
what the exported network computes at inference.

A ``PrefixCache`` built once for a training pool serves every run on it: the
frozen layers start from the same ImageNet weights in every run, so each fold
and the final fit take their rows of one cache instead of recomputing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from worker.retrain.training.augment import random_flips, shift
from worker.retrain.training.batchnorm import normalised_batches, precise_batchnorm, spread


@runtime_checkable
class Splittable(Protocol):
    """A network that can run its first blocks and the rest separately."""

    def prefix_features(self, x: torch.Tensor, blocks: int) -> torch.Tensor: ...

    def forward_from(self, x: torch.Tensor, blocks: int) -> torch.Tensor: ...

    def split_modules(self, blocks: int) -> tuple[nn.Module, nn.Module]: ...


FEATURE_DTYPE = torch.float16
"""Cached features are stored in half precision (half the memory; training runs in float32)."""
BATCH = 64
"""Inference batch for the prefix (larger batches ran slower on this 2-core CPU)."""


@dataclass(frozen=True)
class PrefixCache:
    """What a frozen prefix computes for a set of images, and the prefix state that computed it."""

    blocks: int
    views: torch.Tensor
    """(N, 2, C, H, W): features of each image as is and mirrored."""
    stride: int
    """Image pixels per feature cell."""
    state: dict[str, torch.Tensor]
    """The prefix's weights and BatchNorm statistics, loaded into every network that uses it."""

    @classmethod
    def build(
        cls,
        net: Splittable,
        images: np.ndarray,
        normalise: Callable[[torch.Tensor], torch.Tensor],
        blocks: int,
    ) -> PrefixCache:
        """Fit the BatchNorm statistics of the first ``blocks`` blocks to ``images``, then cache."""
        prefix, _ = net.split_modules(blocks)
        precise_batchnorm(
            prefix,
            lambda x: net.prefix_features(x, blocks),
            normalised_batches(spread(images), normalise, BATCH),
        )
        with torch.inference_mode():
            parts = [
                torch.stack(
                    [net.prefix_features(x, blocks), net.prefix_features(x.flip(3), blocks)], 1
                ).to(FEATURE_DTYPE)
                for x in normalised_batches(images, normalise, BATCH)
            ]
        views = torch.cat(parts)
        state = {k: v.detach().clone() for k, v in prefix.state_dict().items()}
        return cls(blocks, views, images.shape[1] // views.shape[-2], state)

    def rows(self, indices: np.ndarray) -> PrefixCache:
        """The cache of a subset of the images (a fold's training rows)."""
        views = self.views[torch.from_numpy(indices)]
        return PrefixCache(self.blocks, views, self.stride, self.state)

    def attach(self, net: Splittable) -> FrozenPrefix:
        """Load the prefix state into ``net`` and freeze it; train the rest with the result."""
        prefix, _ = net.split_modules(self.blocks)
        prefix.load_state_dict(self.state)
        prefix.requires_grad_(False)
        return FrozenPrefix(net, self)


@dataclass
class FrozenPrefix:
    """One training run's view of a cache: batches of features and the trainable rest."""

    net: Splittable
    cache: PrefixCache

    def batch(
        self,
        idx: torch.Tensor,
        flip: bool,
        translate: int,
        generator: torch.Generator,
        *,
        per_image: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the images ``idx``, randomly mirrored and shifted, and which were mirrored.

        ``translate`` is in image pixels; features move by whole cells of ``stride`` pixels.
        """
        flipped = random_flips(len(idx), flip, generator)
        x = self.cache.views[idx, flipped.long()].float()
        x = shift(x, translate // self.cache.stride, generator, per_image=per_image)
        return x.contiguous(memory_format=torch.channels_last), flipped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The trainable rest of the network on cached features."""
        return self.net.forward_from(x, self.cache.blocks)

    def finish(self, precise_bn: bool) -> None:
        """After the last step: precise BN for the trained layers, then unfreeze."""
        if precise_bn:
            self.recalibrate_rest()
        self.release()

    def recalibrate_rest(self) -> None:
        """Precise BN for the trained layers, fed the cached (unmirrored) features."""
        _, rest = self.net.split_modules(self.cache.blocks)
        features = spread(self.cache.views[:, 0])
        precise_batchnorm(
            rest,
            self.forward,
            (
                features[i : i + BATCH].float().contiguous(memory_format=torch.channels_last)
                for i in range(0, len(features), BATCH)
            ),
        )

    def release(self) -> None:
        """Make the frozen layers trainable again (a plain network from here on)."""
        prefix, _ = self.net.split_modules(self.cache.blocks)
        prefix.requires_grad_(True)
        prefix.eval()
