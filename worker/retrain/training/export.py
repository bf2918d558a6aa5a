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

from contracts import (
    Calibration,
    DomainSummary,
    EvaluationMetrics,
    ModelCard,
    Preprocessing,
    TrainingInfo,
)
from worker.errors import ModelError
from worker.inference.model import sha256_hex
from worker.retrain.training.nets import count_parameters


def export_torchscript(net: nn.Module, input_size: tuple[int, int]) -> bytes:
    """Trace + freeze ``net`` for inputs of (height, width); returns the file's bytes.

    The tracer's own check (``check_trace``) traces the network a second time and
    took 4 of the 5 s a six-network retrain model needed to export on a 2-core CPU,
    time a 60 s budget had to keep back; comparing the frozen module's output with
    the network's on a random batch checks what matters for a fraction of that.
    """
    net = net.cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 3, *input_size)
    probe = torch.randn(3, 3, *input_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(net, example, check_trace=False)
        frozen = torch.jit.freeze(traced)
        expected, got = _outputs(net(probe)), _outputs(frozen(probe))
    if len(got) != len(expected) or not all(
        torch.allclose(g, e, rtol=1e-3, atol=1e-4) for g, e in zip(got, expected, strict=False)
    ):
        raise ModelError("the exported TorchScript module does not reproduce the network")
    buffer = io.BytesIO()
    torch.jit.save(frozen, buffer)
    return buffer.getvalue()


def _outputs(output: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A module's output as a tuple: logits alone, or (logits, domain score)."""
    return (output,) if isinstance(output, torch.Tensor) else tuple(output)


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
    domain: DomainSummary | None = None,
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
        domain=domain,
    )
