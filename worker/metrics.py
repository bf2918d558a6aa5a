"""Prometheus metrics of a worker process, served on ``SYNTHDETECT_METRICS_PORT``.

Every metric is defined here and nowhere else: the metrics reference in
docs/operations.md is generated from ``METRICS`` (``python -m worker.metrics
--markdown``) and a test keeps the two equal, and another checks that the
Grafana dashboard and the alert rules in deploy/ name only series this module
exposes.

One worker is one process (Celery's threads pool), so the default registry of
``prometheus_client`` is all it needs: its metrics are thread-safe, and no
multi-process mode (``PROMETHEUS_MULTIPROC_DIR``) is involved. Scale-out means
more processes, each scraped on its own port.

Label values are bounded on purpose: stages, queues, error codes, outcomes,
priorities and model versions are small sets; job ids, URIs and free-text
reasons never become labels (dead-letter reasons are reduced to a class by
``dead_letter_reason_class``).

``synthdetect_batch_size`` shows cross-job batching at work: under load from
many small jobs its mean rises above 1.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from contracts import ErrorCode, ImageResult

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Seconds, 1 ms to 5 min: one image's fetch or decode up to one callback request."""

WAIT_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)
"""Seconds, 10 ms to 2 h: how long a message waited in its queue."""

LONG_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
"""Seconds, 1 s to 1 h: one shard from first fetch to its part written."""

RETRAIN_BUCKETS = (60.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0, 43200.0)
"""Seconds, 1 min to 12 h (``SYNTHDETECT_RETRAIN_TIMEOUT_S`` is at most 12 h)."""

STAGES = ("fetch", "decode", "inference", "write", "callback")
"""Values of ``synthdetect_stage_seconds{stage}``; the queue wait has its own histogram."""

ABSTAINED = "abstained"
"""The ``label`` of an image the model declined (error code ``out_of_domain``)."""

BATCH_SIZE = Histogram(
    "synthdetect_batch_size",
    "Images per inference batch (a mean above 1 means jobs share batches).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
)
BATCH_WAIT_SECONDS = Histogram(
    "synthdetect_batch_wait_seconds",
    "How long a batch's oldest image waited for the batch to run.",
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "synthdetect_stage_seconds",
    "Latency of one pipeline stage: fetch and decode per image, inference per batch, "
    "write per shard part, callback per HTTP attempt.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "synthdetect_queue_wait_seconds",
    "From publish (or the end of a retry's countdown) to the start of the task, by queue "
    "(classify, bulk, retrain); the publisher's clock against the worker's.",
    ["queue"],
    buckets=WAIT_BUCKETS,
)
SHARD_SECONDS = Histogram(
    "synthdetect_shard_seconds",
    "One shard from its first fetch to its part and marker written, by priority.",
    ["priority"],
    buckets=LONG_BUCKETS,
)
IMAGES = Counter(
    "synthdetect_images",
    "Images scored, by model, model version and predicted label (abstained: the model "
    "declined an image unlike its training data, error code out_of_domain).",
    ["model", "version", "label"],
)
IMAGE_ERRORS = Counter(
    "synthdetect_image_errors",
    "Images that failed (fetch, decode, limits, inference), by error code; abstentions "
    "count in synthdetect_images_total instead.",
    ["code"],
)
JOBS = Counter(
    "synthdetect_jobs",
    "Classify jobs finished, by summary status (succeeded, partial, failed) and priority.",
    ["status", "priority"],
)
CALLBACK_ATTEMPTS = Counter(
    "synthdetect_callback_attempts",
    "Webhook attempts, by outcome (delivered, retry, stopped, gave_up, refused).",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "synthdetect_dead_letters",
    "Messages the worker sent to the dead-letter queue, by reason class and source queue.",
    ["reason", "queue"],
)
MODEL_SWAPS = Counter(
    "synthdetect_model_swaps",
    "Times the version serving a model's alias changed in this process (promotion, rollback).",
    ["model"],
)
MODEL_SERVING = Info(
    "synthdetect_model_serving",
    "The version serving each model's alias in this process (value 1, version as a label).",
    ["model"],
)
RETRAIN_RUNS = Counter(
    "synthdetect_retrain_runs",
    "Retrain jobs finished, by outcome (promoted, not_promoted, failed).",
    ["outcome"],
)
RETRAIN_SECONDS = Histogram(
    "synthdetect_retrain_seconds",
    "Duration of a finished retrain job, by outcome.",
    ["outcome"],
    buckets=RETRAIN_BUCKETS,
)
READY = Gauge(
    "synthdetect_ready",
    "1 while the worker's readiness checks pass (what /readyz answers), else 0; by role "
    "(classify, or retrain for a worker consuming only the retrain queue).",
    ["role"],
)

METRICS: tuple[MetricWrapperBase, ...] = (
    QUEUE_WAIT_SECONDS,
    STAGE_SECONDS,
    BATCH_SIZE,
    BATCH_WAIT_SECONDS,
    SHARD_SECONDS,
    IMAGES,
    IMAGE_ERRORS,
    JOBS,
    CALLBACK_ATTEMPTS,
    DEAD_LETTERS,
    MODEL_SWAPS,
    MODEL_SERVING,
    RETRAIN_RUNS,
    RETRAIN_SECONDS,
    READY,
)
"""Every metric of the module, in the order of the reference table."""

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


class BatchReport(Protocol):
    """What one inference batch reports (``worker.inference.batcher.BatchEvent``, frozen)."""

    @property
    def size(self) -> int: ...

    @property
    def run_s(self) -> float: ...

    @property
    def oldest_wait_s(self) -> float: ...


def record_batch(event: BatchReport) -> None:
    """The engine's ``on_batch`` hook."""
    BATCH_SIZE.observe(event.size)
    STAGE_SECONDS.labels("inference").observe(event.run_s)
    BATCH_WAIT_SECONDS.observe(event.oldest_wait_s)


@contextmanager
def timed_stage(stage: str) -> Iterator[None]:
    """Observe the block's duration as ``stage`` (also when it raises: failures take time too)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)


def record_results(results: Iterable[ImageResult]) -> None:
    """Count one shard's results: labels (and abstentions) by model version, errors by code."""
    scored: dict[tuple[str, str, str], int] = {}
    errors: dict[str, int] = {}
    for result in results:
        abstained = result.error is not None and result.error.code == ErrorCode.OUT_OF_DOMAIN
        if result.error is not None and not abstained:
            code = str(result.error.code.value)
            errors[code] = errors.get(code, 0) + 1
        elif result.model is not None:
            key = (result.model.name, result.model.version, result.label or ABSTAINED)
            scored[key] = scored.get(key, 0) + 1
    for (name, version, label), count in scored.items():
        IMAGES.labels(name, version, label).inc(count)
    for code, count in errors.items():
        IMAGE_ERRORS.labels(code).inc(count)


def record_model_serving(name: str, version: str, previous: str | None) -> None:
    """A model's alias is now served by ``version``; a change from ``previous`` is a swap."""
    MODEL_SERVING.labels(name).info({"version": version})
    if previous is not None and previous != version:
        MODEL_SWAPS.labels(name).inc()


def record_retrain(promoted: bool, failed: bool, duration_s: float) -> None:
    """One finished retrain job."""
    outcome = "failed" if failed else "promoted" if promoted else "not_promoted"
    RETRAIN_RUNS.labels(outcome).inc()
    RETRAIN_SECONDS.labels(outcome).observe(duration_s)


_REASON_CLASSES: tuple[tuple[str, str], ...] = (
    (r"^not JSON", "not_json"),
    (r"^schema violation", "schema_violation"),
    (r"^oversize", "oversize"),
    (r"^unknown model", "unknown_model"),
    (r"^input not found", "input_not_found"),
    (r"^manifest ", "bad_manifest"),
    (r"is not a readable tar archive", "bad_tar"),
    (r"^callback secret_ref", "callback_secret_missing"),
    (r"^job_id .* was already used", "job_id_reused"),
    (r"^retrain needs a model registry", "no_registry"),
    (r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Failure|Timeout)\b", "task_failed"),
)
"""Dead-letter reasons (free text) to a bounded label; the first match wins."""


def dead_letter_reason_class(reason: str) -> str:
    """The ``reason`` label of ``synthdetect_dead_letters_total``; "other" when unknown."""
    for pattern, name in _REASON_CLASSES:
        if re.search(pattern, reason):
            return name
    return "other"


def record_dead_letter(reason: str, source_queue: str) -> None:
    """One message dead-lettered by the worker."""
    DEAD_LETTERS.labels(dead_letter_reason_class(reason), source_queue).inc()


def exposed_names(metric: MetricWrapperBase) -> list[str]:
    """The sample names Prometheus stores for ``metric`` (counters gain ``_total`` etc.)."""
    return [metric._name + suffix for suffix in _SUFFIXES[str(metric._type)]]


def all_exposed_names() -> set[str]:
    """Every series name this module can expose."""
    return {name for metric in METRICS for name in exposed_names(metric)}


def markdown_table() -> str:
    """The metrics reference of docs/operations.md, one row per metric."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for metric in METRICS:
        shown = exposed_names(metric)[0] if metric._type != "histogram" else metric._name
        labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "-"
        rows.append(f"| `{shown}` | {metric._type} | {labels} | {metric._documentation} |")
    return "\n".join(rows) + "\n"


_started = threading.Lock()
_serving: set[int] = set()


def serve(port: int) -> None:
    """Start a metrics-only endpoint once per process (no-op for port 0).

    Queue workers use ``worker.health.serve_ops`` instead, which adds the
    health and readiness endpoints on the same port.
    """
    with _started:
        if port and port not in _serving:
            start_http_server(port, addr="0.0.0.0")
            _serving.add(port)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m worker.metrics --markdown")
    sys.stdout.write(markdown_table())
