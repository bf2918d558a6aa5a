"""Every knob of synthdetect, read once from ``SYNTHDETECT_*`` environment variables.

This is the only module that reads the environment (AWS credentials excepted:
boto3 takes them from the standard AWS chain). Each field's description is the
documentation: the README's configuration table is generated from this class
(``python -m worker.settings --markdown``) and a test checks they agree.

Nested values (lists, dicts) are given as JSON, e.g.
``SYNTHDETECT_CALLBACK_ALLOWLIST='["127.0.0.1"]'``.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODELS = Path(__file__).parent / "models"
"""The registry that ships inside the package (holds the default model)."""


class Settings(BaseSettings):
    """One settings object for the CLI, the worker and the tests."""

    model_config = SettingsConfigDict(env_prefix="SYNTHDETECT_", extra="ignore", frozen=True)

    # --- logging -----------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Minimum level of log lines."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto = readable on a terminal, JSON lines otherwise."
    )

    # --- inference engine ----------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where models run; auto = CUDA when available, else CPU."
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads for torch ops; 0 = cores / inference threads (at least 1).",
    )
    inference_threads: int = Field(
        default=0,
        ge=0,
        le=64,
        description=(
            "Batches run at once; 0 = one per core on a CPU (each with one torch thread), "
            "2 on a GPU (one batch's copy overlaps the other's compute)."
        ),
    )
    max_batch: int = Field(
        default=64,
        ge=1,
        le=8192,
        description="Largest inference batch; 64 is the CPU optimum scripts/bench_model.py "
        "measures for the default model, raise it (256-1024) on a GPU.",
    )
    max_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=10_000,
        description="How long a partly filled batch waits for more images before it runs.",
    )
    batch_queue_size: int = Field(
        default=4096,
        ge=1,
        description="Images waiting for the batcher; submitters block beyond it (backpressure).",
    )
    cuda_precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="Autocast precision on CUDA (the CPU always runs fp32)."
    )
    fetch_concurrency: int = Field(
        default=16, ge=1, le=512, description="Images read from storage at the same time."
    )
    decode_threads: int = Field(
        default=0, ge=0, description="Threads that decode and preprocess images; 0 = one per core."
    )

    # --- image limits (DESIGN §10) ---------------------------------------------
    max_image_bytes: int = Field(
        default=25 * 1024 * 1024, ge=1, description="Larger objects fail with too_large."
    )
    max_image_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Width x height above this fails with too_many_pixels (decompression bombs).",
    )
    allowed_formats: list[str] = Field(
        default=["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"],
        description="Pillow format names that may be decoded; others fail unsupported_format.",
    )

    decode_pixel_budget: int = Field(
        default=50_000_000,
        ge=1,
        description=(
            "Decoded pixels all decode threads of a process may hold at once; an image "
            "larger than this decodes alone. Bounds decode memory at about 4-12 bytes per "
            "pixel, however large the images and however many threads (docs/performance.md)."
        ),
    )

    # --- models ----------------------------------------------------------------
    model_registry: str = Field(
        default="",
        description=(
            "Registry root (s3://bucket/prefix or a folder) holding <name>/<version>/; "
            "empty = only the models bundled in the package."
        ),
    )
    default_model: str = Field(default="default", description="Model used when none is named.")
    alias_poll_s: float = Field(
        default=5.0,
        ge=0,
        description="How often a worker re-reads model aliases (how fast promotions arrive).",
    )

    # --- domain check and provenance ----------------------------------------------
    domain_policy: Literal["auto", "flag", "abstain"] = Field(
        default="auto",
        description="Out-of-domain images: flag = keep the label and report the domain; "
        "abstain = no label, error code out_of_domain, scores kept; auto = abstain for models "
        "whose card declares a narrow domain (the default model), flag for the others.",
    )
    provenance: bool = Field(
        default=True,
        description="Read C2PA manifests, IPTC/XMP DigitalSourceType and generator tags from "
        "each image's bytes (no extra I/O).",
    )
    c2pa_trust_anchors: Path | None = Field(
        default=None,
        description="PEM file of the certificate authorities whose C2PA signatures count as "
        "validated; without it no manifest is validated (and none decides a label).",
    )

    # --- object storage ----------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 API endpoint; unset = AWS. e.g. http://127.0.0.1:8333"
    )
    s3_region: str = Field(default="us-east-1", description="Region for S3 requests.")
    s3_max_pool_connections: int = Field(
        default=64, ge=1, description="HTTP connections boto3 keeps open to S3."
    )
    s3_get_client: Literal["auto", "obstore", "boto3"] = Field(
        default="auto",
        description=(
            "Client of the image GETs: obstore (Rust, about a fifth of botocore's CPU per "
            "small object; auto = obstore when installed) or boto3. Everything else uses boto3."
        ),
    )
    s3_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Seconds to wait for a TCP connection to S3."
    )
    s3_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for S3 to send the next bytes of a response.",
    )

    # --- failures: how long to wait for storage and the broker --------------------------
    storage_retry_window_s: float = Field(
        default=900.0,
        ge=0,
        le=86_400,
        description=(
            "How long a shard (or a job's listing, or a callback) keeps retrying transient "
            "storage failures (no answer, timeouts, throttling, 5xx), counted from its first "
            "failure. Then it gives up: its unread images are listed with storage_unavailable "
            "and the job is finalised (partial or failed) with its callback. 4xx answers "
            "(403, 404, 400, ...) are never retried."
        ),
    )
    storage_retry_backoff_base_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description=(
            "First delay between retries of a failed shard; it doubles per retry up to "
            "SYNTHDETECT_STORAGE_RETRY_BACKOFF_MAX_S, each drawn between half and all of it."
        ),
    )
    storage_retry_backoff_max_s: float = Field(
        default=60.0, gt=0, le=900, description="Longest delay between retries of a failed shard."
    )
    broker_publish_retry_s: float = Field(
        default=120.0,
        ge=0,
        le=3600,
        description=(
            "How long a worker keeps trying to publish a message (a shard, a retry, a "
            "callback attempt) while the broker is unreachable, before the task fails and "
            "its message is redelivered (owed callbacks are also found by the sweeper)."
        ),
    )
    callback_sweep_interval_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description=(
            "How often a worker looks for owed callbacks (a summary without a finished "
            "delivery, recorded under <bucket>/_synthdetect/pending-callbacks/) and queues "
            "them; also once at start. 0 = never."
        ),
    )
    callback_sweep_buckets: list[str] = Field(
        default_factory=list,
        description=(
            'Results buckets the sweeper looks in, as JSON ["results"]; empty = every bucket '
            "the worker's credentials can list."
        ),
    )

    # --- queue worker: broker and queues ------------------------------------------
    broker_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672//",
        description=(
            "Message broker: amqp://user:pass@host:port/vhost (RabbitMQ) or sqs:// "
            "(Amazon SQS; credentials from the AWS chain)."
        ),
    )
    queue_prefix: str = Field(
        default="synthdetect",
        pattern=r"^[A-Za-z0-9_\-]{1,40}$",
        description=(
            "Prefix of every queue name: <prefix>-classify, -bulk, -callbacks, -retrain, "
            "-jobs (plain JSON jobs) and -dead (dead letters)."
        ),
    )
    worker_concurrency: int = Field(
        default=16,
        ge=1,
        le=512,
        description=(
            "Tasks a worker process runs at once (threads sharing one model and one batcher)."
        ),
    )
    bulk_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "Bulk shards a worker process runs at once, on threads apart from "
            "SYNTHDETECT_WORKER_CONCURRENCY, so interactive jobs never wait behind a bulk scan."
        ),
    )
    shard_size: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description=(
            "Images per shard message; jobs with more are split. Keep one shard well under "
            "the broker's consumer timeout (RabbitMQ) or visibility timeout (SQS)."
        ),
    )
    max_job_images: int = Field(
        default=200_000,
        ge=1,
        description="Jobs with more images are dead-lettered as oversize.",
    )
    max_message_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Plain JSON job messages larger than this are dead-lettered as oversize.",
    )
    max_redeliveries: int = Field(
        default=5,
        ge=1,
        le=100,
        description=(
            "Times a message may be redelivered (worker lost, crash) before the broker "
            "dead-letters it (RabbitMQ x-delivery-limit; SQS maxReceiveCount - 1)."
        ),
    )
    shutdown_grace_s: float = Field(
        default=25.0,
        ge=0,
        le=3600,
        description=(
            "On SIGTERM a worker stops taking messages and finishes a running shard only if "
            "it can within this many seconds; otherwise it hands the shard back to the broker "
            "at once (RabbitMQ: reject with requeue; SQS: visibility 0). Give the process "
            "manager a few seconds more (Kubernetes terminationGracePeriodSeconds)."
        ),
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics on this port of the worker; 0 = off.",
    )

    retrain_timeout_s: int = Field(
        default=6 * 3600,
        ge=1200,
        le=43_200,
        description=(
            "Longest a retrain job may hold its queue message. Retrain consumers ask RabbitMQ "
            "for this consumer timeout (x-consumer-timeout, honoured from RabbitMQ 3.12; older "
            "brokers need consumer_timeout >= this in rabbitmq.conf); the SQS retrain queue is "
            "created with it as visibility timeout. Retrain jobs whose time budget does not fit "
            "(10 minutes are kept for evaluation and publishing) are dead-lettered."
        ),
    )

    # --- queue worker: Amazon SQS ---------------------------------------------------
    sqs_region: str = Field(default="us-east-1", description="Region of the SQS queues.")
    sqs_endpoint_url: str | None = Field(
        default=None,
        description="SQS API endpoint; unset = AWS. e.g. http://127.0.0.1:5000 for moto.",
    )
    sqs_visibility_timeout_s: int = Field(
        default=1800,
        ge=30,
        le=43_200,
        description=(
            "Seconds a received SQS message stays invisible; must exceed the longest shard "
            "and the longest callback backoff, or the message is delivered twice."
        ),
    )
    sqs_create_queues: bool = Field(
        default=False,
        description="Create missing SQS queues (with redrive policy) when the worker starts.",
    )

    # --- queue worker: callbacks ------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        default=None,
        description=(
            "Standard Webhooks signing secret (whsec_<base64>) for callbacks whose "
            "secret_ref is 'default'. Callbacks are refused while it is unset."
        ),
    )
    webhook_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description=(
            'Further secrets by name for Callback.secret_ref, as JSON {"name": "whsec_..."}.'
        ),
    )
    callback_allowlist: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts, IPs or CIDR ranges callbacks may reach although they are loopback, "
            'private, link-local or metadata addresses, as JSON ["127.0.0.1"].'
        ),
    )
    callback_connect_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Seconds to connect to a callback URL."
    )
    callback_timeout_s: float = Field(
        default=15.0, gt=0, le=300, description="Seconds a callback request may take in all."
    )
    callback_max_attempts: int = Field(
        default=10, ge=1, le=50, description="Callback attempts before delivery is given up."
    )
    callback_backoff_base_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Backoff base: after failed attempt n the delay is drawn uniformly between half "
            "and all of min(base x 2^(n-1), SYNTHDETECT_CALLBACK_BACKOFF_MAX_S); a "
            "Retry-After answer replaces the draw."
        ),
    )
    callback_backoff_max_s: float = Field(
        default=900.0,
        gt=0,
        le=43_200,
        description=(
            "Longest delay between attempts, Retry-After included (SQS caps delays at 900)."
        ),
    )
    callback_inline_max_bytes: int = Field(
        default=20_000,
        ge=0,
        description="Per-image results travel inside the callback body while it stays this small.",
    )

    def decode_thread_count(self) -> int:
        """Decode threads to start (resolves 0 = one per core)."""
        return self.decode_threads or (os.cpu_count() or 1)

    @property
    def broker_kind(self) -> Literal["amqp", "sqs"]:
        """Which broker ``broker_url`` names; anything but sqs:// is spoken as AMQP."""
        return "sqs" if self.broker_url.startswith("sqs://") else "amqp"

    def webhook_secret_for(self, ref: str) -> SecretStr | None:
        """The signing secret a callback's ``secret_ref`` names, or None if not configured."""
        if ref == "default" and self.webhook_secret is not None:
            return self.webhook_secret
        return self.webhook_secrets.get(ref)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


def markdown_table() -> str:
    """The configuration table for the README, one row per setting."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(unset)" if default in (None, "", [], {}) else f"`{default}`"
        if isinstance(default, SecretStr):
            shown = "(secret)"
        rows.append(f"| `SYNTHDETECT_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        sys.stdout.write(markdown_table())
