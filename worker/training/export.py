"""Turning a trained network into a published artifact: TorchScript bytes + model card.

The network is traced on the CPU and frozen (weights inlined, BatchNorm folded
by the loader's ``optimize_for_inference``), so serving needs no Python class
code. The card records the file's sha256; the loader refuses any file that
does not match it.
"""

from __future__ import annotations

import io
import warnings
from datetime import UTC, datetime

import torch
from torch import nn

from contracts import Calibration, EvaluationMetrics, ModelCard, Preprocessing, TrainingInfo
from worker.inference.model import sha256_hex
from worker.training.nets import count_parameters


def export_torchscript(net: nn.Module, input_size: tuple[int, int]) -> bytes:
    """Trace + freeze ``net`` for inputs of (height, width); returns the file's bytes."""
    net = net.cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 3, *input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(net, example)
        frozen = torch.jit.freeze(traced)
    buffer = io.BytesIO()
    torch.jit.save(frozen, buffer)
    return buffer.getvalue()


def build_card(
    *,
    name: str,
    version: str,
    net: nn.Module,
    model_bytes: bytes,
    labels: list[str],
    architecture: str,
    preprocessing: Preprocessing,
    calibration: Calibration,
    training: TrainingInfo | None,
    metrics: dict[str, EvaluationMetrics],
) -> ModelCard:
    """The card that describes ``model_bytes`` (sha256 and size computed here)."""
    return ModelCard(
        name=name,
        version=version,
        created_at=datetime.now(UTC),
        sha256=sha256_hex(model_bytes),
        size_bytes=len(model_bytes),
        labels=labels,
        architecture=architecture,
        parameters=count_parameters(net),
        preprocessing=preprocessing,
        calibration=calibration,
        training=training,
        metrics=metrics,
    )
