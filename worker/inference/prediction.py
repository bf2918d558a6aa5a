"""One image's scores: what the engine hands back. No torch here, so that modules which only
pass predictions along (the pipeline, the job runner) import without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

from contracts import ModelId


@dataclass(frozen=True)
class Prediction:
    """One image's calibrated scores, its domain score, and the model that produced them."""

    label: str
    confidence: float
    scores: dict[str, float]
    model: ModelId
    domain_score: float | None = None
    """Distance from the training images' features (None: the model file returns none)."""
