"""Choosing where models run, and how: runner threads, torch threads, precision, transfers.

CUDA is touched only here and only when a model is loaded, never at import
time: a process that forks workers (prefork pools) must not have initialised
CUDA before the fork.

``ExecutionPlan`` holds every device-dependent choice in one place, so the rules
are unit-tested on a CPU-only machine:

- CPU: one batch runner per core, each with one torch thread (intra-op threads
  spin at every barrier, which costs most when the process also decodes), fp32;
- CUDA: two runners, each with its own CUDA stream, so one batch's host-to-device
  copy overlaps the other's compute; pinned host buffers and non-blocking copies;
  autocast in the configured precision (bf16 by default: checked against fp32 by
  ``scripts/check_precision.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from worker.errors import ModelError

Precision = Literal["bf16", "fp16", "fp32"]
_AUTOCAST: dict[str, torch.dtype | None] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": None,
}
CUDA_RUNNERS = 2
"""Batches in flight on one GPU: one copies in while the other computes."""


def select_device(preference: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """CUDA when asked for or when ``auto`` finds a GPU; the CPU otherwise."""
    if preference == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if preference == "cuda" and not has_cuda:
        raise ModelError("SYNTHDETECT_DEVICE=cuda but no CUDA device is available")
    return torch.device("cuda") if has_cuda else torch.device("cpu")


def configure_cpu_threads(threads: int) -> None:
    """Pin torch's intra-op thread count (0 keeps torch's default of one per core)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class ExecutionPlan:
    """How batches run on ``device``."""

    device: torch.device
    runners: int
    """Batches formed and run at once (batcher threads)."""
    torch_threads: int
    """torch's intra-op threads (CPU work of every runner)."""
    autocast_dtype: torch.dtype | None
    """Mixed precision on CUDA; None = fp32. The CPU always runs fp32."""

    @property
    def pinned_transfers(self) -> bool:
        """Copy batches through pinned host memory, without blocking the runner."""
        return self.device.type == "cuda"

    @classmethod
    def choose(
        cls,
        device: torch.device,
        *,
        runners: int = 0,
        torch_threads: int = 0,
        precision: Precision = "bf16",
        cores: int | None = None,
    ) -> ExecutionPlan:
        """The plan for ``device``; 0 means "choose" for ``runners`` and ``torch_threads``."""
        cores = cores or os.cpu_count() or 1
        if device.type == "cuda":
            return cls(
                device,
                runners or CUDA_RUNNERS,
                torch_threads or 1,
                _AUTOCAST[precision],
            )
        chosen = runners or cores
        return cls(device, chosen, torch_threads or max(1, cores // chosen), None)

    def apply(self) -> None:
        """Set torch's thread count for this process."""
        configure_cpu_threads(self.torch_threads)
