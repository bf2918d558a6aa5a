"""synthdetect's wire format, importable by producers without the worker.

Messages: ``ClassifyJob`` and ``RetrainJob`` (producers send them), ``ImageResult``,
``JobSummary`` and ``RetrainSummary`` (the worker writes them), ``ModelCard`` (next
to every model file). ``ClassifyShard`` is internal to workers.

``pip install synthdetect`` installs this package and pydantic, nothing else.
``contracts.producer`` publishes jobs as plain JSON to RabbitMQ or SQS (with the
``producer`` extra: kombu, boto3); ``contracts.schema_files`` writes the JSON Schemas.
"""

from contracts._base import SCHEMA_VERSION, ModelId, ModelRef, describe_validation_error
from contracts.errors import ErrorCode, ImageError
from contracts.jobs import (
    Budget,
    Callback,
    ClassifyJob,
    ClassifyShard,
    Holdout,
    ManifestDataset,
    ManifestInput,
    OutputLocation,
    PrefixDataset,
    PrefixInput,
    PromotionPolicy,
    RetrainJob,
    ShardItem,
    TarDataset,
    TarInput,
    TarSlice,
    UriListInput,
)
from contracts.model_card import (
    Calibration,
    DataSummary,
    DomainSummary,
    EvaluationMetrics,
    FeatureSummary,
    ModelCard,
    Preprocessing,
    TrainingInfo,
)
from contracts.results import (
    Counts,
    DomainCheck,
    ImageResult,
    JobSummary,
    Provenance,
    ProvenanceSource,
    RetrainSummary,
    ShardFailure,
    Timings,
)

__all__ = [
    "SCHEMA_VERSION",
    "Budget",
    "Calibration",
    "Callback",
    "ClassifyJob",
    "ClassifyShard",
    "Counts",
    "DataSummary",
    "DomainCheck",
    "DomainSummary",
    "ErrorCode",
    "EvaluationMetrics",
    "FeatureSummary",
    "Holdout",
    "ImageError",
    "ImageResult",
    "JobSummary",
    "ManifestDataset",
    "ManifestInput",
    "ModelCard",
    "ModelId",
    "ModelRef",
    "OutputLocation",
    "PrefixDataset",
    "PrefixInput",
    "Preprocessing",
    "PromotionPolicy",
    "Provenance",
    "ProvenanceSource",
    "RetrainJob",
    "RetrainSummary",
    "ShardFailure",
    "ShardItem",
    "TarDataset",
    "TarInput",
    "TarSlice",
    "Timings",
    "TrainingInfo",
    "UriListInput",
    "describe_validation_error",
]
