"""The training domain of a model: fitted once at training time, scored in every forward pass.

The exported model returns ``(logits, domain score)``. The score is the sum,
over a few taps of the network (the global averages of intermediate
activations, see ``forward_taps``), of the image's squared class-conditional
Mahalanobis distance from the training images' features at that tap, with one
covariance shared by the classes (Lee et al., 2018), each divided by the median
distance of the training images themselves so the taps weigh the same. The
threshold is a quantile of held-out in-domain images' scores, so a chosen
share of them (``COVERAGE``) passes.

Which taps: on the default model v1 and our out-of-domain set
(``scripts/make_ood_set.py``: photos and renders squeezed to 32x32, where the
size rule cannot help), the mid-level blocks separate best. At 99.5 % held-out
coverage, the pooled features alone (the classifier's input) flagged 32 % of the
squeezed photos, the 8x8 block (block 4) 52 %, blocks 4 and 7 summed 58 %; the
five stage ends summed 40 % and their maximum 28 % (the 32x32 and 16x16 blocks
add noise), per-channel standard deviations 14 %. Renders: 95 % with blocks 4
and 7.

The Gaussians live in the TorchScript file as constants: the card describes
them (``FeatureSummary``) and its sha256 pins them, and the engine needs no
second model run and no code of ours to score a domain.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from contracts import DomainSummary, FeatureSummary
from worker.imaging import SourceInfo
from worker.retrain.training.loop import Normalisation

COVERAGE = 0.995
"""Share of held-out in-domain images the threshold lets through. The target is 99 %;
a 99.5 % quantile of a few thousand images keeps a new set from the same domain above
99 % despite the sampling noise of the quantile."""
SHRINKAGE = 0.05
"""Weight of the scaled identity blended into each covariance, so that features that
barely vary in training (a dead channel) do not make every new image infinitely far."""
MAX_FIT_IMAGES = 20_000
"""Enough images for a few hundred dimensions' covariance; more only costs time."""
SIZE_TOLERANCE = 2.0
MAX_SIZES_LISTED = 20


class Tapped(Protocol):
    """A network that can return intermediate features next to its logits."""

    def forward_taps(
        self, x: torch.Tensor, taps: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    def default_taps(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class TapGaussians:
    """One tap's class means and shared precision, in whitened form, and its scale.

    ``whiten`` is a factor of the precision matrix (P = W Wᵀ), so the squared
    Mahalanobis distance to class c is ``|x W - means[c]|²`` with the means
    already whitened: one matrix product per batch.
    """

    whiten: np.ndarray  # (d, d)
    means: np.ndarray  # (classes, d), whitened
    scale: float  # median squared distance of the training images

    def distances(self, features: np.ndarray) -> np.ndarray:
        z = features.astype(np.float64) @ self.whiten
        d2: np.ndarray = ((z[:, None, :] - self.means[None]) ** 2).sum(-1).min(1)
        return d2 / self.scale


@dataclass(frozen=True)
class DomainFit:
    """The fitted Gaussians of every tap and the threshold chosen on held-out images."""

    taps: tuple[int, ...]
    gaussians: list[TapGaussians]
    threshold: float
    fitted_on: int
    heldout_scores: np.ndarray

    def scores(self, taps: Sequence[np.ndarray]) -> np.ndarray:
        per_tap = [g.distances(f) for g, f in zip(self.gaussians, taps, strict=True)]
        total: np.ndarray = np.stack(per_tap, axis=1).sum(axis=1)
        return total

    @property
    def coverage(self) -> float:
        """Share of the held-out images at or under the threshold."""
        held = self.heldout_scores
        return float((held <= self.threshold).mean()) if len(held) else 0.0

    def summary(self, names: list[str]) -> FeatureSummary:
        held = self.heldout_scores
        return FeatureSummary(
            taps=names,
            dimensions=sum(g.whiten.shape[0] for g in self.gaussians),
            fitted_on=self.fitted_on,
            threshold=self.threshold,
            coverage=self.coverage,
            heldout=len(held),
            quantiles={
                f"{q:g}": float(np.quantile(held, q / 100)) for q in (50, 90, 99, 99.5, 99.9)
            }
            if len(held)
            else {},
        )


@torch.inference_mode()
def tap_features(
    net: nn.Module, images: np.ndarray, norm: Normalisation, taps: tuple[int, ...], batch: int = 256
) -> list[np.ndarray]:
    """Each tap's features (N, d) for uint8 NHWC ``images``."""
    net.eval()
    parts: list[list[np.ndarray]] = [[] for _ in taps]
    for start in range(0, len(images), batch):
        x = norm.apply(torch.from_numpy(images[start : start + batch]))
        _, found = net.forward_taps(x, taps)  # type: ignore[operator]
        for part, f in zip(parts, found, strict=True):
            part.append(f.float().numpy())
    return [np.concatenate(p) if p else np.zeros((0, 0), np.float32) for p in parts]


def fit_gaussians(features: np.ndarray, labels: np.ndarray) -> TapGaussians:
    """Class means and a shared, shrunk covariance of one tap's training features."""
    x = features.astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([x[labels == k].mean(0) for k in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(1, len(x) - len(classes))
    d = cov.shape[0]
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * (np.trace(cov) / d) * np.eye(d)
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2
    whiten = np.linalg.cholesky(precision)  # P = L Lᵀ, so |(x - m) L|² = (x-m)ᵀ P (x-m)
    gaussians = TapGaussians(whiten, means @ whiten, 1.0)
    scale = float(np.median(gaussians.distances(x)))
    return TapGaussians(whiten, means @ whiten, max(scale, 1e-12))


def fit_domain(
    net: nn.Module,
    norm: Normalisation,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    heldout_images: np.ndarray,
    *,
    taps: tuple[int, ...] | None = None,
    coverage: float = COVERAGE,
    seed: int = 0,
) -> DomainFit:
    """Fit each tap's Gaussians on (up to ``MAX_FIT_IMAGES``) training images and pick
    the threshold that ``coverage`` of the held-out images stay under."""
    taps = taps if taps is not None else net.default_taps()  # type: ignore[operator]
    if len(train_images) > MAX_FIT_IMAGES:
        keep = np.sort(np.random.default_rng(seed).permutation(len(train_images))[:MAX_FIT_IMAGES])
        train_images, train_labels = train_images[keep], train_labels[keep]
    features = tap_features(net, train_images, norm, taps)
    gaussians = [fit_gaussians(f, train_labels) for f in features]
    fit = DomainFit(taps, gaussians, float("inf"), len(train_images), np.zeros(0))
    if len(heldout_images) == 0:  # nothing held out: the training images' own scores (lower)
        heldout_images = train_images
    held = fit.scores(tap_features(net, heldout_images, norm, taps))
    threshold = float(np.quantile(held, coverage, method="higher"))
    return DomainFit(taps, gaussians, threshold, len(train_images), held)


class DomainScored(nn.Module):
    """``net`` that returns ``(logits, domain score)``: what gets exported."""

    def __init__(self, net: nn.Module, fit: DomainFit) -> None:
        super().__init__()
        self.net = net
        self.taps = fit.taps
        for i, g in enumerate(fit.gaussians):
            self.register_buffer(f"whiten{i}", torch.tensor(g.whiten, dtype=torch.float32))
            self.register_buffer(f"means{i}", torch.tensor(g.means, dtype=torch.float32))
            self.register_buffer(f"scale{i}", torch.tensor(g.scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, found = self.net.forward_taps(x, self.taps)  # type: ignore[operator]
        scores = []
        for i, f in enumerate(found):
            z = f.float() @ getattr(self, f"whiten{i}")
            d2 = (z.unsqueeze(1) - getattr(self, f"means{i}").unsqueeze(0)).pow(2).sum(2)
            scores.append(d2.min(1).values / getattr(self, f"scale{i}"))
        return logits, torch.stack(scores, 1).sum(1)


def tap_names(taps: tuple[int, ...]) -> list[str]:
    return ["pooled features" if t == -1 else f"block {t} (global average)" for t in taps]


def domain_summary(
    sources: Sequence[SourceInfo],
    fit: DomainFit | None,
    description: str,
    *,
    narrow: bool | None = None,
) -> DomainSummary:
    """The card's record of the training domain: sizes and formats seen, the feature fit."""
    if not sources:
        raise ValueError("a domain needs at least one training image")
    widths = [s.width for s in sources]
    heights = [s.height for s in sources]
    sizes = Counter(s.describe() for s in sources)
    formats = Counter(s.format for s in sources)
    if narrow is None:
        narrow = max(widths) < 2 * min(widths) and max(heights) < 2 * min(heights)
    return DomainSummary(
        description=description,
        narrow=narrow,
        input_sizes=dict(sizes.most_common(MAX_SIZES_LISTED)),
        width_range=(min(widths), max(widths)),
        height_range=(min(heights), max(heights)),
        size_tolerance=SIZE_TOLERANCE,
        formats=dict(formats.most_common()),
        features=fit.summary(tap_names(fit.taps)) if fit is not None else None,
    )
