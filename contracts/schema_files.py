"""Generate the checked-in JSON Schema files: ``python -m contracts.schema_files``.

A test regenerates them in memory and fails when the files on disk drift, so the
schemas producers read are always the ones the worker enforces.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from contracts import (
    ClassifyJob,
    ClassifyShard,
    ImageResult,
    JobSummary,
    ModelCard,
    RetrainJob,
    RetrainSummary,
)

SCHEMA_DIR = Path(__file__).parent / "schemas"

PUBLISHED: dict[str, type[BaseModel]] = {
    "classify-job": ClassifyJob,
    "classify-shard": ClassifyShard,
    "retrain-job": RetrainJob,
    "image-result": ImageResult,
    "job-summary": JobSummary,
    "retrain-summary": RetrainSummary,
    "model-card": ModelCard,
}


def render_schema(model: type[BaseModel]) -> str:
    """The schema text for one model, stable across runs (sorted keys, trailing newline)."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def expected_files() -> dict[Path, str]:
    """Every schema file path and the text it must hold."""
    return {SCHEMA_DIR / f"{name}.schema.json": render_schema(m) for name, m in PUBLISHED.items()}


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for path, text in expected_files().items():
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
