"""Host-to-GPU transfers that overlap compute: pinned buffers and a CUDA stream per runner.

Each batch runner thread keeps one pinned (page-locked) host buffer, grown to the
largest batch it has seen, and one CUDA stream. A batch is copied into the
pinned buffer, sent with ``non_blocking=True`` and computed on the runner's
stream, so while one runner's batch computes, the other's copy is in flight.
The buffer is reused only after the runner read its results back (which waits
for its stream), so a copy never reads a buffer that is being refilled.

Nothing here runs on a CPU device: ``LoadedModel`` uses it only for CUDA.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import torch


class PinnedStaging:
    """Per-thread pinned buffers and streams for one CUDA device."""

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"pinned staging is for CUDA devices, not {device}")
        self.device = device
        self._local = threading.local()

    @contextmanager
    def on_stream(self) -> Iterator[None]:
        """Run the block's CUDA work on this thread's own stream."""
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            self._local.stream = stream
        with torch.cuda.stream(stream):
            yield

    def to_device(self, images: npt.NDArray[np.uint8]) -> torch.Tensor:
        """``images`` on the device, copied through this thread's pinned buffer (async)."""
        buffer: torch.Tensor | None = getattr(self._local, "buffer", None)
        if buffer is None or buffer.numel() < images.size:
            buffer = torch.empty(images.size, dtype=torch.uint8).pin_memory()
            self._local.buffer = buffer
        host = buffer[: images.size].view(images.shape)
        host.copy_(torch.from_numpy(images))
        return host.to(self.device, non_blocking=True)
