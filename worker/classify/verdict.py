"""From a model's scores, the image's domain check and its provenance to one ``ImageResult``.

The policy lives here, where results are made:

- a *validated* C2PA claim of AI generation decides the label (``synthetic``,
  confidence 1, ``decided_by: provenance``); the model's scores stay in the result
  as the pixels' own opinion. Unvalidated metadata is reported and changes nothing;
- an image outside the model's training domain keeps its label under the ``flag``
  policy; under ``abstain`` it gets no label, the stable code ``out_of_domain`` and
  its scores. ``auto`` (the default) abstains for models whose card declares a
  narrow domain and flags for the others;
- an unknown domain (``in_domain: null``) is reported as unknown and never abstains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contracts import (
    DomainCheck,
    ErrorCode,
    ImageError,
    ImageResult,
    ModelCard,
    Provenance,
)
from worker.imaging import SourceInfo
from worker.inference.domain import judge_domain
from worker.inference.prediction import Prediction
from worker.settings import Settings

SYNTHETIC = "synthetic"
"""The label a validated claim of AI generation sets (models without it are never overridden)."""

PolicyName = Literal["auto", "flag", "abstain"]


@dataclass(frozen=True)
class DomainPolicy:
    """What an out-of-domain image gets: its label (flag) or none (abstain)."""

    name: PolicyName = "auto"

    @classmethod
    def from_settings(cls, settings: Settings) -> DomainPolicy:
        return cls(settings.domain_policy)

    def abstains(self, card: ModelCard) -> bool:
        if self.name == "auto":
            return card.domain is not None and card.domain.narrow
        return self.name == "abstain"


def make_result(
    *,
    uri: str,
    prediction: Prediction,
    card: ModelCard,
    source: SourceInfo | None,
    provenance: Provenance | None,
    policy: DomainPolicy,
    true_label: str | None = None,
) -> ImageResult:
    """The result of one scored image under ``policy``."""
    domain = judge_domain(card, source, prediction.domain_score)
    label: str | None = prediction.label
    confidence: float | None = prediction.confidence
    decided_by: Literal["model", "provenance"] | None = "model"
    error = None
    if decides_label(provenance, card):
        label, confidence, decided_by = SYNTHETIC, 1.0, "provenance"
    elif domain.in_domain is False and policy.abstains(card):
        label, confidence, decided_by, error = None, None, None, abstention(domain)
    return ImageResult(
        uri=uri,
        label=label,
        confidence=confidence,
        scores=prediction.scores,
        model=prediction.model,
        error=error,
        true_label=true_label,
        domain=domain,
        provenance=provenance,
        decided_by=decided_by,
    )


def decides_label(provenance: Provenance | None, card: ModelCard) -> bool:
    """A validated C2PA claim of AI generation, for a model that has a synthetic label."""
    return (
        provenance is not None
        and provenance.source == "c2pa"
        and provenance.validated
        and provenance.ai_generated
        and SYNTHETIC in card.labels
    )


def abstention(domain: DomainCheck) -> ImageError:
    return ImageError(
        code=ErrorCode.OUT_OF_DOMAIN,
        message=f"the model abstains: {domain.reason or 'the image is out of its domain'}",
    )
