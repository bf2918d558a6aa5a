"""Is an image like the ones the model was trained on? The domain check of every result.

Two tests, cheapest first, both against the card's ``domain`` (recorded at
training time):

1. size: an input whose width or height lies more than ``size_tolerance`` times
   outside the training range is out of domain whatever its pixels look like
   after fitting (a 3024x4032 phone photo squeezed to 32x32 is not a CIFAKE
   thumbnail);
2. features: the model's own domain score, computed in the same forward pass,
   against the threshold that 99 % of held-out in-domain images stayed under.

A model whose card has no domain summary, or whose file returns no score, gets
``in_domain: null`` with the reason: unknown is never reported as a pass.
"""

from __future__ import annotations

from contracts import DomainCheck, DomainSummary, ModelCard
from worker.imaging import SourceInfo

NO_SUMMARY = "the model card records no training domain, so the domain is unknown"
NO_SCORE = "the model file returns no domain score, so only the input size was checked"
NO_FEATURES = "the model card has no feature summary, so only the input size was checked"


def judge_domain(card: ModelCard, source: SourceInfo | None, score: float | None) -> DomainCheck:
    """The domain check of one image scored by the model with ``card``."""
    domain = card.domain
    if domain is None:
        return DomainCheck(in_domain=None, score=score, reason=NO_SUMMARY)
    features = domain.features
    threshold = features.threshold if features is not None else None
    if source is not None:
        outside = size_outside(domain, source)
        if outside is not None:
            return DomainCheck(in_domain=False, score=score, threshold=threshold, reason=outside)
    if features is None:
        return DomainCheck(in_domain=None, score=score, reason=NO_FEATURES)
    if score is None:
        return DomainCheck(in_domain=None, threshold=threshold, reason=NO_SCORE)
    if score != score or score > features.threshold:  # NaN is out too
        return DomainCheck(
            in_domain=False,
            score=score,
            threshold=threshold,
            reason=f"features unlike the training images (score {score:.3g} above the "
            f"threshold {features.threshold:.3g})",
        )
    return DomainCheck(in_domain=True, score=score, threshold=threshold)


def size_outside(domain: DomainSummary, source: SourceInfo) -> str | None:
    """Why ``source``'s size is far outside the training sizes, or None if it is not."""
    tolerance = domain.size_tolerance
    (min_w, max_w), (min_h, max_h) = domain.width_range, domain.height_range
    if (
        min_w / tolerance <= source.width <= max_w * tolerance
        and min_h / tolerance <= source.height <= max_h * tolerance
    ):
        return None
    return f"input {source.describe()} is far outside the training sizes {training_sizes(domain)}"


def training_sizes(domain: DomainSummary) -> str:
    """'32x32', or 'from 24x24 to 640x480' when the training sizes varied."""
    (min_w, max_w), (min_h, max_h) = domain.width_range, domain.height_range
    if (min_w, min_h) == (max_w, max_h):
        return f"{min_w}x{min_h}"
    return f"from {min_w}x{min_h} to {max_w}x{max_h}"
