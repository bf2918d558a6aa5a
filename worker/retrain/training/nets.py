"""Network architectures our training code builds, all TorchScript-exportable.

``SynthNet`` is a small residual CNN for low-resolution inputs: a 3x3 stem
(stride 1 or 2), then stages of residual blocks, each stage after the first
halving the resolution and widening the channels, then global average pooling
and a linear head. Channel counts that are multiples of 16 keep oneDNN's CPU
kernels on their fast paths (24/48/96 measured 3.6x slower than 16/32/64).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SynthNetSpec:
    """Shape of a SynthNet; stored in the model card's hyper-parameters."""

    widths: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1)
    stem_stride: int = 2
    dropout: float = 0.0

    def describe(self) -> str:
        stages = "-".join(f"{w}x{b}" for w, b in zip(self.widths, self.blocks, strict=True))
        return f"synthnet(stem_stride={self.stem_stride}, stages={stages})"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(x + self.bn2(self.conv2(self.conv1(x))))
        return out


class SynthNet(nn.Module):
    """Residual CNN classifier; outputs logits of shape (N, num_classes)."""

    def __init__(self, spec: SynthNetSpec, num_classes: int) -> None:
        super().__init__()
        if len(spec.widths) != len(spec.blocks):
            raise ValueError("widths and blocks must have the same length")
        layers: list[nn.Module] = [_conv_bn(3, spec.widths[0], spec.stem_stride)]
        channels = spec.widths[0]
        for stage, (width, blocks) in enumerate(zip(spec.widths, spec.blocks, strict=True)):
            if stage > 0:
                layers.append(_conv_bn(channels, width, stride=2))
                channels = width
            layers.extend(ResidualBlock(channels) for _ in range(blocks))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        logits: torch.Tensor = self.head(self.dropout(x))
        return logits

    def forward_taps(
        self, x: torch.Tensor, taps: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits, and the global average of the output of each layer in ``taps`` (-1: the
        pooled features the classifier sees); see ``EfficientNetLite0.forward_taps``."""
        found: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                found[i] = x.mean((2, 3))
        features = self.pool(x).flatten(1)
        found[-1] = features
        logits: torch.Tensor = self.head(self.dropout(features))
        return logits, [found[t] for t in taps]

    def default_taps(self) -> tuple[int, ...]:
        """The middle stages' last layers (before a downsampling convolution) and the
        pooled features: mid-level features separate unfamiliar images best."""
        ends = [
            i - 1
            for i, layer in enumerate(self.features)
            if i > 0 and not isinstance(layer, ResidualBlock)
        ]
        return (*ends[1:], -1)


def count_parameters(module: nn.Module) -> int:
    """Trainable and frozen parameters together."""
    return sum(p.numel() for p in module.parameters())
