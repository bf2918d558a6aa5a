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
        default=0, ge=0, description="CPU threads for torch ops; 0 = one per core."
    )
    max_batch: int = Field(default=256, ge=1, le=8192, description="Largest inference batch.")
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

    # --- object storage ----------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 API endpoint; unset = AWS. e.g. http://127.0.0.1:8333"
    )
    s3_region: str = Field(default="us-east-1", description="Region for S3 requests.")
    s3_max_pool_connections: int = Field(
        default=64, ge=1, description="HTTP connections boto3 keeps open to S3."
    )
    s3_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Seconds to wait for a TCP connection to S3."
    )
    s3_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for S3 to send the next bytes of a response.",
    )

    def decode_thread_count(self) -> int:
        """Decode threads to start (resolves 0 = one per core)."""
        return self.decode_threads or (os.cpu_count() or 1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


def markdown_table() -> str:
    """The configuration table for the README, one row per setting."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(unset)" if default in (None, "") else f"`{default}`"
        if isinstance(default, SecretStr):
            shown = "(secret)"
        rows.append(f"| `SYNTHDETECT_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        sys.stdout.write(markdown_table())
