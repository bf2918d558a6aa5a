"""A loaded model: TorchScript module + card, ready to score uint8 image batches.

The model file format is private to this module (``load_model``), so adding a
``torch.export`` package later touches nothing else. Loading refuses a file
whose sha256 differs from the card: a truncated upload or a swapped file must
never serve traffic.

A module returns either logits (N, classes) or a pair (logits, domain score (N,)):
the domain score comes from the same forward pass (see
``worker.retrain.training.domain``); older files without it still serve, and
their results say the domain is unknown.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from contracts import ModelCard, ModelId
from worker.errors import ChecksumMismatch, ModelError
from worker.inference.prediction import Prediction
from worker.inference.staging import PinnedStaging


@dataclass(frozen=True)
class Scored:
    """A batch's calibrated probabilities (N, classes) and domain scores (N,) or None."""

    probabilities: np.ndarray
    domain_scores: np.ndarray | None


@dataclass(eq=False)
class LoadedModel:
    """A model in memory on one device. Thread-safe for inference."""

    card: ModelCard
    module: torch.jit.ScriptModule
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    _mean: torch.Tensor = field(init=False, repr=False)
    _inv_std: torch.Tensor = field(init=False, repr=False)
    _staging: PinnedStaging | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        spec = self.card.preprocessing
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(spec.mean, device=self.device).view(shape) * 255.0
        self._inv_std = 1.0 / (torch.tensor(spec.std, device=self.device).view(shape) * 255.0)
        if self.device.type == "cuda":
            self._staging = PinnedStaging(self.device)

    @property
    def id(self) -> ModelId:
        return ModelId(name=self.card.name, version=self.card.version)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, 3): what ``predict`` expects per image."""
        h, w = self.card.preprocessing.input_size
        return (h, w, 3)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, shape (N, len(labels)), for uint8 NHWC images."""
        return self.score(images).probabilities

    def score(self, images: np.ndarray) -> Scored:
        """Calibrated class probabilities and domain scores for uint8 NHWC images.

        Normalisation runs on the device on the whole batch, and the result is laid
        out channels_last, which is what the exported convolutions run fastest on.
        On CUDA the uint8 batch travels through this thread's pinned buffer on its
        own stream (``PinnedStaging``), so concurrent runners overlap copy and compute.
        """
        if images.ndim != 4 or images.shape[1:] != self.input_shape or images.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images of shape (N, {self.input_shape}), "
                f"got {images.dtype} {images.shape}"
            )
        if self._staging is None:
            return self._forward(torch.from_numpy(images))
        with self._staging.on_stream():
            return self._forward(self._staging.to_device(images))

    def _forward(self, batch: torch.Tensor) -> Scored:
        x = batch.permute(0, 3, 1, 2).float()
        # Explicitly channels_last: oneDNN takes a 20% slower path for the permuted view.
        x = ((x - self._mean) * self._inv_std).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            output = self.module(x)
        logits, domain = _split_output(output, len(batch))
        logits = logits.float() / self.card.calibration.temperature
        probabilities = torch.softmax(logits, dim=1).cpu().numpy()
        # .cpu() waited for this stream: the pinned buffer is free for the next batch now.
        return Scored(probabilities, None if domain is None else domain.float().cpu().numpy())

    def predict(self, images: np.ndarray) -> list[Prediction]:
        """One ``Prediction`` per image, in order."""
        scored = self.score(images)
        probs = scored.probabilities
        domain = scored.domain_scores
        labels = self.card.labels
        model_id = self.id
        best = probs.argmax(axis=1)
        return [
            Prediction(
                label=labels[k],
                confidence=float(row[k]),
                scores={label: float(p) for label, p in zip(labels, row, strict=True)},
                model=model_id,
                domain_score=None if domain is None else float(domain[i]),
            )
            for i, (row, k) in enumerate(zip(probs, best, strict=True))
        ]

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run a few dummy batches so the first real request does not pay for JIT profiling."""
        for n in batch_sizes:
            self.predict_proba(np.zeros((n, *self.input_shape), dtype=np.uint8))

    def _autocast(self) -> torch.autocast:
        enabled = self.device.type == "cuda" and self.autocast_dtype is not None
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=enabled,
        )


def _split_output(output: object, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, domain scores or None) from what the module returned."""
    if isinstance(output, torch.Tensor):
        return output, None
    if (
        isinstance(output, tuple | list)
        and len(output) == 2
        and all(isinstance(part, torch.Tensor) for part in output)
        and output[1].shape == (n,)
    ):
        return output[0], output[1]
    raise ModelError(
        "a model must return logits, or (logits, domain score per image); "
        f"this one returned {type(output).__name__}"
    )


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of a byte string (the form model cards use)."""
    return hashlib.sha256(data).hexdigest()


def load_model(
    card: ModelCard,
    model_bytes: bytes,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Verify ``model_bytes`` against the card, load it onto ``device`` and warm it up."""
    digest = sha256_hex(model_bytes)
    if digest != card.sha256:
        raise ChecksumMismatch(
            f"model {card.name}@{card.version}: file sha256 {digest} != card {card.sha256}"
        )
    if card.format != "torchscript":
        raise ModelError(f"model {card.name}@{card.version}: unsupported format {card.format!r}")
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream; we keep it behind this one loader.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            module = torch.jit.load(io.BytesIO(model_bytes), map_location=device)
        except RuntimeError as exc:
            raise ModelError(f"model {card.name}@{card.version} does not load: {exc}") from exc
        module.eval()
        if device.type == "cpu":
            module = torch.jit.optimize_for_inference(module)
    loaded = LoadedModel(card=card, module=module, device=device, autocast_dtype=autocast_dtype)
    loaded.warm_up()
    return loaded
