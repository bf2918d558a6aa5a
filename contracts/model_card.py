"""The model card: everything a worker needs to run a model file, and how good it is."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field, NonNegativeInt, PositiveFloat, PositiveInt

from contracts._base import Contract, Label, ModelName, ModelVersion, SchemaVersion


class Preprocessing(Contract):
    """How raw pixels become the model's input tensor.

    Travels with the model so that a new model with a new input size needs no code
    change: decode to RGB, fit to ``input_size`` by ``resize`` and
    ``interpolation``, scale to [0, 1], subtract ``mean``, divide by ``std``.
    """

    input_size: tuple[PositiveInt, PositiveInt] = Field(description="(height, width)")
    resize: Literal["center_crop", "stretch"] = "center_crop"
    interpolation: Literal["box", "bilinear", "bicubic", "lanczos"] = "box"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (1.0, 1.0, 1.0)


class Calibration(Contract):
    """Temperature scaling applied to the logits before the softmax."""

    method: Literal["temperature"] = "temperature"
    temperature: PositiveFloat = 1.0
    ece_before: float | None = Field(default=None, ge=0, le=1)
    ece_after: float | None = Field(default=None, ge=0, le=1)


class EvaluationMetrics(Contract):
    """Quality of the model on one named evaluation set."""

    dataset: str = Field(description="What was evaluated, e.g. 'dev-test.tar' or '5-fold CV'.")
    n: NonNegativeInt
    accuracy: float = Field(ge=0, le=1)
    per_class_accuracy: dict[Label, float]
    ece: float | None = Field(default=None, ge=0, le=1)
    accuracy_std: float | None = Field(default=None, ge=0, description="Across CV folds.")


class DataSummary(Contract):
    """Which data a model was trained on, precisely enough to reproduce it."""

    source: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    counts: dict[Label, NonNegativeInt]
    unreadable: NonNegativeInt = 0


class TrainingInfo(Contract):
    """How a model was trained: data, start point, recipe, seed and hyper-parameters."""

    data: DataSummary
    start: str = Field(description="'scratch', 'imagenet:<backbone>' or 'model:<name>@<version>'.")
    recipe: str
    hyperparameters: dict[str, Any]
    seed: int
    duration_s: float = Field(ge=0)
    device: str


class FeatureSummary(Contract):
    """How the model scores an image's distance from its training images.

    The exported model returns, next to its logits, the image's class-conditional
    Mahalanobis distance (shared covariance) from its training images' features at
    ``taps``: global averages of intermediate activations, each tap's distance
    divided by its median on the training images, their sum the score.
    The means and precision matrices live inside the model file (the card's
    ``sha256`` pins them); ``threshold`` was chosen on held-out in-domain images.
    """

    method: Literal["mahalanobis"] = "mahalanobis"
    taps: list[str] = Field(min_length=1, description="Where the features come from.")
    dimensions: PositiveInt = Field(description="Feature values per image, over all taps.")
    fitted_on: NonNegativeInt = Field(description="Training images the Gaussians were fitted on.")
    threshold: float = Field(description="Scores above this are out of domain.")
    coverage: float = Field(ge=0, le=1, description="Share of the held-out images under it.")
    heldout: NonNegativeInt = Field(description="How many held-out images chose the threshold.")
    quantiles: dict[str, float] = Field(
        default_factory=dict, description="Held-out score quantiles by percent, e.g. '99'."
    )


class DomainSummary(Contract):
    """The training domain: what the model has seen, so serving can tell what it has not.

    An input whose width or height lies more than ``size_tolerance`` times outside
    the range seen in training is out of domain by its size alone (a 3024x4032
    photo against 32x32 thumbnails); otherwise the feature score decides. A
    ``narrow`` domain (one source, one size) makes the default policy abstain.
    """

    description: str = Field(description="What the training images were, in words.")
    narrow: bool = Field(description="The model only knows a narrow kind of image.")
    input_sizes: dict[str, NonNegativeInt] = Field(
        description="The commonest training image sizes ('WxH') and how many had each."
    )
    width_range: tuple[PositiveInt, PositiveInt]
    height_range: tuple[PositiveInt, PositiveInt]
    size_tolerance: float = Field(default=2.0, ge=1)
    formats: dict[str, NonNegativeInt] = Field(description="Training images per file format.")
    features: FeatureSummary | None = None


class ModelCard(Contract):
    """Metadata published next to every model file; loading verifies ``sha256``."""

    schema_version: SchemaVersion = 1
    name: ModelName
    version: ModelVersion
    created_at: AwareDatetime
    format: Literal["torchscript"] = "torchscript"
    file: str = "model.pt"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: PositiveInt
    labels: list[Label] = Field(min_length=2, description="Output index i means labels[i].")
    architecture: str
    parameters: PositiveInt
    preprocessing: Preprocessing
    calibration: Calibration = Calibration()
    training: TrainingInfo | None = None
    metrics: dict[str, EvaluationMetrics] = Field(
        default_factory=dict, description="By evaluation name, e.g. 'heldout' and 'cv'."
    )
    domain: DomainSummary | None = Field(
        default=None, description="The training domain; without it results say 'unknown'."
    )
