"""A tiny exported SynthNet and its card, for tests that need a real TorchScript model.

Built with the project's own training code (``nets`` + ``export``) in well under a
second, at an 8x8 input size so that loading, warming up and scoring cost almost
nothing. ``tiny_model`` returns logits only (a model from before the domain check);
``tiny_domain_model`` returns (logits, domain score) and its card records a domain.
"""

from __future__ import annotations

import functools

import torch

from contracts import Calibration, ModelCard, Preprocessing
from tests.support.toy_images import bright_and_dark
from worker.imaging import SourceInfo
from worker.retrain.training.domain import DomainFit, DomainScored, domain_summary, fit_domain
from worker.retrain.training.export import build_card, export_torchscript
from worker.retrain.training.loop import Normalisation
from worker.retrain.training.nets import SynthNet, SynthNetSpec

TINY_SPEC = SynthNetSpec(widths=(16,), blocks=(1,))
TINY_INPUT_SIZE = (8, 8)
TINY_LABELS = ["real", "synthetic"]
PLAIN = Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
"""The tiny model's normalisation (its card's defaults): pixels / 255."""


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


@functools.cache
def _tiny_domain_bytes() -> tuple[SynthNet, bytes, DomainFit]:
    """The tiny net with a domain check fitted on toy bright/dark images."""
    net, _ = _tiny_net_and_bytes()
    images, labels = bright_and_dark(400, size=TINY_INPUT_SIZE[0], seed=1)
    held, _ = bright_and_dark(200, size=TINY_INPUT_SIZE[0], seed=2)
    fit = fit_domain(net, PLAIN, images, labels, held, taps=(-1,))
    return net, export_torchscript(DomainScored(net, fit), TINY_INPUT_SIZE), fit


def tiny_domain_model(
    name: str = "tiny", version: str = "1", *, narrow: bool = True
) -> tuple[ModelCard, bytes]:
    """The tiny model returning (logits, domain score), its card recording a domain of
    8x8 noisy bright and dark images (``narrow`` by default, like the default model)."""
    net, model_bytes, fit = _tiny_domain_bytes()
    sources = [SourceInfo(width=8, height=8, format="PNG")] * 400
    card = build_card(
        name=name,
        version=version,
        net=net,
        model_bytes=model_bytes,
        labels=TINY_LABELS,
        architecture=TINY_SPEC.describe(),
        preprocessing=Preprocessing(input_size=TINY_INPUT_SIZE),
        calibration=Calibration(),
        training=None,
        metrics={},
        domain=domain_summary(sources, fit, "noisy bright and dark 8x8 squares", narrow=narrow),
    )
    return card, model_bytes
