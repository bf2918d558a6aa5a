"""One image's scores: what the engine hands back. No torch here, so that modules which only
pass predictions along (the pipeline, the job runner) import without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

from contracts import ModelId


@dataclass(frozen=True)
class Prediction:
    """One image's calibrated scores and the model that produced them."""

    label: str
    confidence: float
    scores: dict[str, float]
    model: ModelId
