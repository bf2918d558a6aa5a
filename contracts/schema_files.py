"""Generate the checked-in JSON Schema files: ``python -m contracts.schema_files``.

A test regenerates them in memory and fails when the files on disk drift, so the
schemas producers read are always the ones the worker enforces. Each rule a model
checks in code (a ``model_validator``, an ``AfterValidator``) is restated for the
schema next to it (``json_schema_extra``), and tests feed the same broken documents
to the schema and to the model. What JSON Schema cannot say stays model-only and is
named in the model's docstring: comparing two fields (a shard's ``index < count``),
and telling ``5`` from ``5.0`` (for JSON Schema both are integers; strict validation
rejects ``5.0`` for an integer field).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from contracts import (
    ClassifyJob,
    ClassifyShard,
    ImageResult,
    JobSummary,
    ModelCard,
    RetrainJob,
    RetrainSummary,
)
from contracts._base import Contract

SCHEMA_DIR = Path(__file__).parent / "schemas"

PUBLISHED: dict[str, type[Contract]] = {
    "classify-job": ClassifyJob,
    "classify-shard": ClassifyShard,
    "retrain-job": RetrainJob,
    "image-result": ImageResult,
    "job-summary": JobSummary,
    "retrain-summary": RetrainSummary,
    "model-card": ModelCard,
}


class ContractJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema generator, closing two gaps where its schema accepts what
    the model rejects.

    - Dictionary keys: pydantic writes ``dict[Label, float]`` as ``patternProperties``,
      which lets a key that misses the pattern through with any value at all; here the
      key's pattern joins ``propertyNames`` and the value schema becomes
      ``additionalProperties``.
    - Tagged unions (``inputs``, ``dataset``): the model needs the tag (``kind``) even
      though each variant defaults it, but ``discriminator`` is an OpenAPI keyword that
      JSON Schema validators ignore, so ``{"uris": [...]}`` passed the ``oneOf``; here
      the tag is ``required``.
    """

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> JsonSchemaValue:
        json_schema = super().tagged_union_schema(schema)
        tag = json_schema.get("discriminator", {}).get("propertyName")
        if isinstance(tag, str):
            json_schema["required"] = [tag]
        return json_schema

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        json_schema = super().dict_schema(schema)
        patterns = json_schema.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1:
            [(pattern, values)] = patterns.items()
            del json_schema["patternProperties"]
            keys = {**json_schema.get("propertyNames", {}), "pattern": pattern}
            json_schema["propertyNames"] = keys
            json_schema["additionalProperties"] = values
        return json_schema


def render_schema(model: type[BaseModel]) -> str:
    """The schema text for one model, stable across runs (sorted keys, trailing newline)."""
    schema = model.model_json_schema(mode="validation", schema_generator=ContractJsonSchema)
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
