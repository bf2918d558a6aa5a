"""Jobs that producers put on the queue: classify and retrain."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AnyHttpUrl, AwareDatetime, ConfigDict, Field, NonNegativeInt, model_validator

from contracts._base import (
    Contract,
    JobId,
    Label,
    ModelName,
    ModelRef,
    S3Uri,
    SchemaVersion,
)

MAX_URIS_PER_MESSAGE = 10_000
"""Longer lists belong in a manifest object: it keeps broker messages small."""

HTTP_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]"
"""What the JSON Schema can say of ``AnyHttpUrl``: an http(s) scheme and a host."""


class UriListInput(Contract):
    """An explicit list of image objects."""

    kind: Literal["uris"] = "uris"
    uris: list[S3Uri] = Field(min_length=1, max_length=MAX_URIS_PER_MESSAGE)


class PrefixInput(Contract):
    """Every object under a prefix (listed page by page, never all at once)."""

    kind: Literal["prefix"] = "prefix"
    prefix: S3Uri


class ManifestInput(Contract):
    """A JSON Lines (``{"uri": ..., "label": ...}``) or CSV (``uri[,label]``) object."""

    kind: Literal["manifest"] = "manifest"
    manifest: S3Uri


class TarInput(Contract):
    """A ``.tar`` shard read as a stream; each member is one image."""

    kind: Literal["tar"] = "tar"
    tar: S3Uri


JobInputs = Annotated[
    UriListInput | PrefixInput | ManifestInput | TarInput,
    Field(discriminator="kind"),
]


class OutputLocation(Contract):
    """Where results go: ``<uri>/<job_id>/part-NNNNN.jsonl`` and ``.../summary.json``."""

    uri: S3Uri


class Callback(Contract):
    """A webhook that receives the signed job summary (Standard Webhooks)."""

    url: AnyHttpUrl = Field(json_schema_extra={"pattern": HTTP_URL_PATTERN})
    secret_ref: str = Field(
        default="default",
        pattern=r"^[a-z0-9_\-]{1,64}$",
        description="Name of a signing secret in the worker's configuration, never the secret.",
    )


class ClassifyJob(Contract):
    """Label every input image ``real`` or ``synthetic`` with a calibrated confidence."""

    schema_version: SchemaVersion = 1
    job_id: JobId
    model: ModelRef = ModelRef()
    inputs: JobInputs
    output: OutputLocation
    callback: Callback | None = None
    priority: Literal["interactive", "bulk"] = Field(
        default="interactive",
        description="interactive: low-latency queue; bulk: the bulk-scan queue.",
    )
    labels: dict[str, Label] | None = Field(
        default=None,
        description="Optional known labels by URI, echoed as true_label for review.",
    )
    submitted_at: AwareDatetime | None = None


class Budget(Contract):
    """How much search a retrain may do; at least one limit is required."""

    model_config = ConfigDict(
        json_schema_extra={
            # _one_limit, for the schema: seconds defaults to 300, so only an explicit
            # "seconds": null needs trials.
            "if": {"required": ["seconds"], "properties": {"seconds": {"type": "null"}}},
            "then": {"required": ["trials"], "properties": {"trials": {"type": "integer"}}},
        }
    )

    seconds: float | None = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    trials: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_limit(self) -> Budget:
        if self.seconds is None and self.trials is None:
            raise ValueError("set seconds, trials, or both")
        return self


class PrefixDataset(Contract):
    """Labelled images under a prefix, one folder per label: ``<prefix>/<label>/...``."""

    kind: Literal["prefix"] = "prefix"
    prefix: S3Uri


class ManifestDataset(Contract):
    """A manifest object whose rows name a URI and its label."""

    kind: Literal["manifest"] = "manifest"
    manifest: S3Uri


class TarDataset(Contract):
    """A ``.tar`` whose members sit in one folder per label."""

    kind: Literal["tar"] = "tar"
    tar: S3Uri


RetrainDataset = Annotated[
    PrefixDataset | ManifestDataset | TarDataset, Field(discriminator="kind")
]


class Holdout(Contract):
    """The data that model selection never sees: a share of the dataset, or its own prefix."""

    share: float = Field(default=0.2, gt=0, lt=0.9)
    prefix: S3Uri | None = Field(default=None, description="If set, `share` is ignored.")


class PromotionPolicy(Contract):
    """When a new version may take the ``production`` alias."""

    mode: Literal["if_not_worse", "always", "never"] = "if_not_worse"
    margin: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Promote if candidate accuracy >= production accuracy - margin.",
    )


class RetrainJob(Contract):
    """Train, evaluate and publish a new version of a model from labelled images."""

    schema_version: SchemaVersion = 1
    job_id: JobId
    model: ModelName = "default"
    dataset: RetrainDataset
    budget: Budget = Budget()
    cv_folds: int = Field(default=5, ge=2, le=20)
    holdout: Holdout = Holdout()
    promotion: PromotionPolicy = PromotionPolicy()
    seed: NonNegativeInt = 0
    callback: Callback | None = None
    submitted_at: AwareDatetime | None = None


class ShardItem(Contract):
    """One image of a shard, with its known label when the job supplied one."""

    uri: str
    label: Label | None = None


class TarSlice(Contract):
    """Bytes ``[start, end)`` of a tar object, cut on member-header boundaries."""

    uri: S3Uri
    start: NonNegativeInt
    end: NonNegativeInt


class ClassifyShard(Contract):
    """Internal: one bounded piece of a classify job, small enough for one message.

    Workers cut these from a ``ClassifyJob`` and keep the whole job next to its
    results (``<output>/<job_id>/job.json``), so a shard carries only what scoring
    needs. Producers never send shards.

    The schema states "items or tar_slice, not both"; "index < count" compares two
    fields, which JSON Schema cannot express, so only the model checks it.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["items"],
                    "properties": {"items": {"type": "array"}, "tar_slice": {"type": "null"}},
                },
                {
                    "required": ["tar_slice"],
                    "properties": {"tar_slice": {"type": "object"}, "items": {"type": "null"}},
                },
            ]
        }
    )

    schema_version: SchemaVersion = 1
    job_id: JobId
    model: ModelRef
    output: OutputLocation
    priority: Literal["interactive", "bulk"] = "interactive"
    index: NonNegativeInt
    count: int = Field(ge=1)
    items: list[ShardItem] | None = None
    tar_slice: TarSlice | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ClassifyShard:
        if (self.items is None) == (self.tar_slice is None):
            raise ValueError("a shard carries either items or tar_slice")
        if self.index >= self.count:
            raise ValueError("index must be < count")
        return self
