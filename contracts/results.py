"""What synthdetect writes back: one result per image and one summary per job."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field, NonNegativeInt, model_validator

from contracts._base import Contract, JobId, Label, ModelId, SchemaVersion
from contracts.errors import ErrorCode, ImageError


class ImageResult(Contract):
    """The verdict on one image: a label with its confidence, or a structured error.

    ``confidence`` is the calibrated probability of ``label``; ``scores`` holds the
    calibrated probability of every label and sums to 1.
    """

    model_config = ConfigDict(
        json_schema_extra={
            # _label_xor_error, for the schema: an absent field is null.
            "oneOf": [
                {
                    "title": "labelled",
                    "required": ["label", "confidence", "scores"],
                    "properties": {
                        "label": {"type": "string"},
                        "confidence": {"type": "number"},
                        "scores": {"type": "object"},
                        "error": {"type": "null"},
                    },
                },
                {
                    "title": "failed",
                    "required": ["error"],
                    "properties": {"error": {"type": "object"}, "label": {"type": "null"}},
                },
            ]
        }
    )

    schema_version: SchemaVersion = 1
    uri: str
    label: Label | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    scores: dict[Label, float] | None = None
    model: ModelId | None = None
    error: ImageError | None = None
    true_label: Label | None = Field(
        default=None, description="The known label, when the job supplied one (for review)."
    )

    @model_validator(mode="after")
    def _label_xor_error(self) -> ImageResult:
        if (self.label is None) == (self.error is None):
            raise ValueError("a result has either a label or an error")
        if self.label is not None and (self.confidence is None or self.scores is None):
            raise ValueError("a labelled result needs confidence and scores")
        return self


class Counts(Contract):
    """How many images ended in each way."""

    total: NonNegativeInt = 0
    by_label: dict[Label, NonNegativeInt] = Field(default_factory=dict)
    by_error: dict[ErrorCode, NonNegativeInt] = Field(default_factory=dict)


class Timings(Contract):
    """When the job moved, as far as the worker saw it."""

    submitted_at: AwareDatetime | None = None
    started_at: AwareDatetime
    finished_at: AwareDatetime
    duration_s: float = Field(ge=0)
    images_per_s: float = Field(ge=0)


class JobSummary(Contract):
    """The outcome of a classify job, written after its last shard finishes.

    ``status`` is ``succeeded`` when every image got a label, ``partial`` when
    some did and some failed, and ``failed`` when none did.
    """

    schema_version: SchemaVersion = 1
    job_id: JobId
    kind: Literal["classify"] = "classify"
    status: Literal["succeeded", "partial", "failed"]
    models: list[ModelId] = Field(
        description="Every model version that scored part of the job (several after a swap)."
    )
    counts: Counts
    timings: Timings
    shards: int = Field(ge=1)
    parts: list[str] = Field(description="URIs of the JSON Lines parts, in shard order.")
    summary_uri: str | None = None
    results: list[ImageResult] | None = Field(
        default=None, description="Inline per-image results, for small jobs' callbacks only."
    )
    error: str | None = Field(default=None, description="Why a job failed as a whole.")


class RetrainSummary(Contract):
    """The outcome of a retrain job: what was published and whether it was promoted."""

    schema_version: SchemaVersion = 1
    job_id: JobId
    kind: Literal["retrain"] = "retrain"
    status: Literal["succeeded", "failed"]
    model: ModelId | None = None
    promoted: bool = False
    decision: str = Field(description="Why the version was or was not promoted.")
    heldout_accuracy: float | None = None
    production_accuracy: float | None = None
    card_uri: str | None = None
    report_uri: str | None = None
    duration_s: float = Field(ge=0)
    error: str | None = None
