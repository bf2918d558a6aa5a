"""Fitting the training domain: Gaussians per tap, a held-out threshold, the exported module
returning (logits, score) equal to the fit's own scores, and the card's domain summary."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tests.support.toy_images import bright_and_dark
from worker.imaging import SourceInfo
from worker.retrain.run import MeanLogits
from worker.retrain.training.domain import (
    DomainScored,
    domain_summary,
    fit_domain,
    fit_gaussians,
    tap_features,
)
from worker.retrain.training.efficientnet_lite import EfficientNetLite0
from worker.retrain.training.export import export_torchscript
from worker.retrain.training.loop import Normalisation
from worker.retrain.training.nets import SynthNet, SynthNetSpec

PLAIN = Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gaussians_measure_whitened_distances() -> None:
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 2.0])
    features = rng.normal(0, 1, (4000, 2)) * scale
    labels = np.zeros(4000, dtype=np.int64)
    g = fit_gaussians(features, labels)
    # One standard deviation along either axis is about the same distance once whitened
    # (the shrinkage towards a scaled identity pulls them together a little).
    along_x, along_y = g.distances(np.array([[1.0, 0.0], [0.0, 2.0]]))
    assert along_x == pytest.approx(along_y, rel=0.15)
    assert np.median(g.distances(features)) == pytest.approx(1.0, rel=1e-6)


def test_a_fitted_domain_passes_held_out_images_and_rejects_other_ones() -> None:
    torch.manual_seed(0)
    net = SynthNet(SynthNetSpec(widths=(16, 32), blocks=(1, 1)), 2).eval()
    images, labels = bright_and_dark(600, size=16, seed=1)
    held, _ = bright_and_dark(400, size=16, seed=2)
    fit = fit_domain(net, PLAIN, images, labels, held, coverage=0.99)
    assert fit.coverage >= 0.99
    assert fit.fitted_on == 600
    stripes = np.zeros((20, 16, 16, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    scores = fit.scores(tap_features(net, stripes, PLAIN, fit.taps))
    assert (scores > fit.threshold).all()


def test_the_exported_module_returns_the_fits_scores_in_the_same_pass() -> None:
    torch.manual_seed(0)
    net = SynthNet(SynthNetSpec(widths=(16, 32), blocks=(1, 1)), 2).eval()
    images, labels = bright_and_dark(200, size=16, seed=1)
    fit = fit_domain(net, PLAIN, images, labels, images[:50])
    module = torch.jit.load(io.BytesIO(export_torchscript(DomainScored(net, fit), (16, 16))))
    x = PLAIN.apply(torch.from_numpy(images[:8]))
    logits, score = module(x)
    assert torch.allclose(logits, net(x), atol=1e-5)
    expected = fit.scores(tap_features(net, images[:8], PLAIN, fit.taps))
    assert np.allclose(score.numpy(), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("depth", [9, 11])
def test_efficientnet_taps_leave_its_logits_unchanged(depth: int) -> None:
    net = EfficientNetLite0(2, stem_stride=1, depth=depth).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, found = net.forward_taps(x, net.default_taps())
    assert net.default_taps() == (4, 7)
    assert torch.allclose(logits, net(x))
    assert [f.shape[1] for f in found] == [40, 80]


def test_an_ensemble_reads_its_first_networks_features() -> None:
    torch.manual_seed(0)
    nets = [SynthNet(SynthNetSpec(widths=(8, 16), blocks=(1, 1)), 2).eval() for _ in range(3)]
    ensemble = MeanLogits(nets).eval()
    x = torch.randn(4, 3, 16, 16)
    logits, found = ensemble.forward_taps(x, ensemble.default_taps())
    assert torch.allclose(logits, ensemble(x))
    _, first = nets[0].forward_taps(x, nets[0].default_taps())
    assert all(torch.equal(a, b) for a, b in zip(found, first, strict=True))


def test_the_summary_records_sizes_formats_and_narrowness() -> None:
    sources = [SourceInfo(32, 32, "JPEG")] * 5 + [SourceInfo(30, 34, "PNG")]
    summary = domain_summary(sources, None, "thumbnails")
    assert summary.narrow is True
    assert summary.width_range == (30, 32)
    assert summary.height_range == (32, 34)
    assert summary.input_sizes == {"32x32": 5, "30x34": 1}
    assert summary.formats == {"JPEG": 5, "PNG": 1}
    varied = domain_summary([SourceInfo(64, 64, "PNG"), SourceInfo(1024, 768, "PNG")], None, "x")
    assert varied.narrow is False
