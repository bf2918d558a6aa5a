"""Prometheus metrics of a worker process, served on ``SYNTHDETECT_METRICS_PORT``.

``synthdetect_batch_size`` is the histogram that shows cross-job batching at
work: under load from many small jobs its mean rises above 1.
"""

from __future__ import annotations

import threading
from typing import Protocol

from prometheus_client import Counter, Histogram, start_http_server

BATCH_SIZE = Histogram(
    "synthdetect_batch_size",
    "Images per inference batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
)
BATCH_SECONDS = Histogram("synthdetect_batch_seconds", "Model time per inference batch.")
BATCH_WAIT_SECONDS = Histogram(
    "synthdetect_batch_wait_seconds", "How long a batch's oldest image waited for the batch."
)
IMAGES = Counter("synthdetect_images_total", "Images classified, by outcome.", ["outcome"])
JOBS = Counter("synthdetect_jobs_total", "Jobs finished, by summary status.", ["status"])
CALLBACK_ATTEMPTS = Counter(
    "synthdetect_callback_attempts_total", "Webhook attempts, by outcome.", ["outcome"]
)
DEAD_LETTERS = Counter("synthdetect_dead_letters_total", "Messages sent to the dead-letter queue.")


class BatchReport(Protocol):
    """What one inference batch reports (``worker.inference.batcher.BatchEvent``, frozen)."""

    @property
    def size(self) -> int: ...

    @property
    def run_s(self) -> float: ...

    @property
    def oldest_wait_s(self) -> float: ...


_started = threading.Lock()
_serving: set[int] = set()


def record_batch(event: BatchReport) -> None:
    """The engine's ``on_batch`` hook."""
    BATCH_SIZE.observe(event.size)
    BATCH_SECONDS.observe(event.run_s)
    BATCH_WAIT_SECONDS.observe(event.oldest_wait_s)


def serve(port: int) -> None:
    """Start the metrics endpoint once per process (no-op for port 0)."""
    with _started:
        if port and port not in _serving:
            start_http_server(port, addr="0.0.0.0")
            _serving.add(port)
