"""What synthdetect writes back: one result per image and one summary per job."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field, NonNegativeInt, model_validator

from contracts._base import Contract, JobId, Label, ModelId, SchemaVersion
from contracts.errors import ErrorCode, ImageError


class DomainCheck(Contract):
    """Whether an image lies in the domain the model was trained on.

    The model card's ``domain`` records that domain: the input sizes it saw and a
    summary of its training images' features. ``score`` is the image's distance
    from them in the model's own feature space (computed in the same forward
    pass), ``threshold`` the distance that 99 % of held-out in-domain images stay
    under. ``in_domain`` is null when the model cannot tell (its card has no
    domain summary, or its file returns no domain score): unknown, never a pass.
    """

    in_domain: bool | None = Field(description="null: unknown (see reason).")
    score: float | None = Field(
        default=None, description="Feature-space distance from the training images."
    )
    threshold: float | None = Field(default=None, description="Scores above this are out.")
    reason: str | None = Field(
        default=None,
        description="Why the image is out of domain or unknown, e.g. "
        "'input 3024x4032 is far outside the training sizes 32x32'.",
        max_length=300,
    )


ProvenanceSource = Literal["c2pa", "xmp", "png_text", "exif"]


class Provenance(Contract):
    """What the file's own metadata says about its origin, read from the fetched bytes.

    ``source`` is the strongest evidence found: a C2PA manifest, an IPTC/XMP
    ``DigitalSourceType``, text chunks an image generator writes into PNGs, or an
    EXIF/XMP software tag. Only a C2PA manifest can be ``validated`` (its
    signature, its hash of these very bytes and its signer's certificate chain to
    a configured trust anchor all check out); everything else is trivially forged
    or stripped, so it is reported and never overrides the pixels.
    """

    source: ProvenanceSource
    claim: str | None = Field(
        default=None,
        description="The IPTC digital source type claimed, e.g. 'trainedAlgorithmicMedia', "
        "'compositeWithTrainedAlgorithmicMedia' or 'digitalCapture'.",
        max_length=200,
    )
    ai_generated: bool = Field(
        description="The metadata says the image was made or composited by generative AI."
    )
    generator: str | None = Field(
        default=None, description="The tool it names, e.g. 'ComfyUI'.", max_length=200
    )
    validated: bool = False
    signer: str | None = Field(
        default=None, description="C2PA only: who signed the manifest.", max_length=200
    )
    detail: str | None = Field(
        default=None,
        description="Why a manifest is not validated, or what else was found.",
        max_length=500,
    )


class ImageResult(Contract):
    """The verdict on one image: a label with its confidence, or a structured error.

    ``confidence`` is the calibrated probability of ``label``; ``scores`` holds the
    calibrated probability of every label and sums to 1. ``domain`` says whether the
    image is like the model's training images; an abstention (error code
    ``out_of_domain``) has no label but keeps ``scores``. ``decided_by`` is
    ``provenance`` when a validated C2PA claim of AI generation set the label.
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
    domain: DomainCheck | None = None
    provenance: Provenance | None = None
    decided_by: Literal["model", "provenance"] | None = Field(
        default=None, description="What set the label: the model's scores or provenance."
    )

    @model_validator(mode="after")
    def _label_xor_error(self) -> ImageResult:
        if (self.label is None) == (self.error is None):
            raise ValueError("a result has either a label or an error")
        if self.label is not None and (self.confidence is None or self.scores is None):
            raise ValueError("a labelled result needs confidence and scores")
        if self.decided_by is not None and self.label is None:
            raise ValueError("decided_by needs a label")
        return self

    @property
    def abstained(self) -> bool:
        """The model declined to label this image (out of its domain)."""
        return self.error is not None and self.error.code == ErrorCode.OUT_OF_DOMAIN


class Counts(Contract):
    """How many images ended in each way.

    Abstentions are in ``by_error`` under ``out_of_domain``; ``out_of_domain``
    counts every image whose domain check failed, labelled or not.
    """

    total: NonNegativeInt = 0
    by_label: dict[Label, NonNegativeInt] = Field(default_factory=dict)
    by_error: dict[ErrorCode, NonNegativeInt] = Field(default_factory=dict)
    out_of_domain: NonNegativeInt = 0
    decided_by_provenance: NonNegativeInt = 0


class Timings(Contract):
    """When the job moved, as far as the worker saw it."""

    submitted_at: AwareDatetime | None = None
    started_at: AwareDatetime
    finished_at: AwareDatetime
    duration_s: float = Field(ge=0)
    images_per_s: float = Field(ge=0)


class ShardFailure(Contract):
    """A shard that gave up: its storage failed for good or for longer than the retry window.

    Its images that were read before the failure keep their results; the others are
    listed with ``code`` as their error, unless the shard could not even learn which
    images it holds (a prefix that could not be listed, a tar that could not be read):
    then ``images_unlisted`` is true and ``inputs`` says what was not read.
    """

    index: NonNegativeInt
    code: ErrorCode
    message: str
    images_unlisted: bool = Field(
        default=False,
        description="True when some of the shard's images are unknown and in no count.",
    )
    inputs: str | None = Field(
        default=None, description="What the shard could not read (a prefix, a tar byte range)."
    )


class JobSummary(Contract):
    """The outcome of a classify job, written after its last shard finishes.

    ``status`` is ``succeeded`` when every image got a label or an abstention
    (``out_of_domain``), ``partial`` when some did and some failed, and ``failed``
    when none did.
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
    failed_shards: list[ShardFailure] | None = Field(
        default=None, description="Shards that gave up, with why (absent when none did)."
    )


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
