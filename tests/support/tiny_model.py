"""A tiny exported SynthNet and its card, for tests that need a real TorchScript model.

Built with the project's own training code (``nets`` + ``export``) in well under a
second, at an 8x8 input size so that loading, warming up and scoring cost almost
nothing.
"""

from __future__ import annotations

import functools

import torch

from contracts import Calibration, ModelCard, Preprocessing
from worker.retrain.training.export import build_card, export_torchscript
from worker.retrain.training.nets import SynthNet, SynthNetSpec

TINY_SPEC = SynthNetSpec(widths=(16,), blocks=(1,))
TINY_INPUT_SIZE = (8, 8)
TINY_LABELS = ["real", "synthetic"]


@functools.cache
def _tiny_net_and_bytes() -> tuple[SynthNet, bytes]:
    torch.manual_seed(0)
    net = SynthNet(TINY_SPEC, num_classes=len(TINY_LABELS))
    with torch.no_grad():
        # Random heads give logits near zero; spread them so probabilities are far from 0.5.
        net.head.weight.mul_(20.0)
    return net, export_torchscript(net, TINY_INPUT_SIZE)


def tiny_model(
    name: str = "tiny", version: str = "1", temperature: float = 1.0
) -> tuple[ModelCard, bytes]:
    """Card and TorchScript bytes of the tiny model (the same bytes for every version)."""
    net, model_bytes = _tiny_net_and_bytes()
    card = build_card(
        name=name,
        version=version,
        net=net,
        model_bytes=model_bytes,
        labels=TINY_LABELS,
        architecture=TINY_SPEC.describe(),
        preprocessing=Preprocessing(input_size=TINY_INPUT_SIZE),
        calibration=Calibration(temperature=temperature),
        training=None,
        metrics={},
    )
    return card, model_bytes
