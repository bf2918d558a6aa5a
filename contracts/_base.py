"""Shared building blocks of the wire format.

Every contract model is strict: unknown fields and wrong types are rejected, and
pydantic's error names the offending field (``inputs.uris.uris.3``: the input
kind, then the field and index), which the worker copies verbatim into the
dead-letter reason.

Strictness is pydantic's strict mode, set once on ``Contract`` so no field can
forget it, and the wire is validated *as JSON*. Strict JSON validation is exactly
the rule a producer can rely on: no string-to-number (``"seconds": "60"``),
number-to-string (``"job_id": 42``), float-to-int (``"cv_folds": 5.0``) or
bool-to-number coercion, while the JSON-native forms of non-JSON types still
parse: enums and literals from their strings, datetimes from ISO 8601 strings,
tuples from arrays. Strict *Python* validation would reject those JSON-native
forms (it wants an ``ErrorCode``, a ``datetime``, a ``tuple``), and lax
validation would accept the coercions, so:

- JSON text goes through ``Model.model_validate_json`` (results, model cards, bodies);
- an already decoded JSON value (a Celery task argument, a ``json.loads`` result)
  goes through ``Model.from_json_value``, which validates it in JSON mode;
- Python code builds messages from Python objects (``ErrorCode.NOT_FOUND``,
  ``datetime``, tuples) with the constructor or ``model_validate``.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from contracts.keys import S3_URI_PATTERN, check_s3_uri

SCHEMA_VERSION = 1
"""The one wire version this package reads and writes."""

SchemaVersion = Literal[1]


class Contract(BaseModel):
    """Base of every message: strict, immutable, no extra fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    @classmethod
    def from_json_value(cls, value: object) -> Self:
        """Validate a decoded JSON value (dicts, lists, str, int, float, bool, None) by the
        wire's rules, as if it were still JSON text: ISO datetimes and enum strings parse,
        coercions do not. Raises ``ValidationError``; a value JSON cannot hold (a Python
        ``datetime``, a set) raises ``TypeError``: it did not come off the wire.
        """
        return cls.model_validate_json(json.dumps(value))


S3Uri = Annotated[
    str,
    AfterValidator(check_s3_uri),
    # The validator's rule, restated for the schema (the validator keeps the friendlier message).
    Field(
        description=(
            "s3://bucket/key. Key segments may not be empty ('//'), '.' or '..', and the "
            "key may hold no control character or backslash."
        ),
        examples=["s3://images/2026/11/a.jpg"],
        json_schema_extra={"pattern": S3_URI_PATTERN},
    ),
]
"""An ``s3://bucket/key`` address with a plain key (``contracts.keys``: no ``.``, ``..`` or
empty segments, control characters or backslashes); the key may be empty for a whole bucket."""

JobId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"),
    Field(
        description=(
            "Producer-chosen idempotency key. Used in result keys and as the webhook-id, "
            "so it is restricted to letters, digits and . _ : -"
        ),
        examples=["moderation-2026-11-28-000042"],
    ),
]

ModelName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._\-]{0,63}$"),
    Field(description="Registry name of a model, e.g. 'default'.", examples=["default"]),
]

ModelVersion = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"),
    Field(description="A published version of a model, e.g. '3'.", examples=["1"]),
]

Label = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[^\s/\\]+$"),
    Field(description="A class label such as 'real' or 'synthetic'.", examples=["real"]),
]


class ModelRef(Contract):
    """Which model serves a job: a name and, optionally, a pinned version.

    Without a version the worker uses whatever the ``production`` alias points at
    when each batch runs, so promotions take effect between batches.
    """

    name: ModelName = "default"
    version: ModelVersion | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """``name`` or ``name@version`` (the form the CLI and settings use)."""
        name, _, version = text.partition("@")
        return cls(name=name, version=version or None)


class ModelId(Contract):
    """The exact model that produced a result (always fully resolved)."""

    name: ModelName
    version: ModelVersion


def describe_validation_error(exc: ValidationError) -> str:
    """``field.path: message`` for each error, joined by ``; ``.

    The dead-letter reason and the CLI's usage errors; the path names the input
    kind, then the field and index (``inputs.uris.uris.3``).
    """
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(body)'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )
