"""Strict validation on the wire: no coercion between JSON types, JSON-native forms parse.

Every way a message comes in is checked: JSON text (``model_validate_json``), a decoded
JSON value (``Contract.from_json_value``: Celery task arguments, ``json.loads``), and the
worker's own entry points that wrap them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import contracts
from contracts import ClassifyJob, ErrorCode, ImageResult, Preprocessing, RetrainJob
from contracts.schema_files import PUBLISHED
from tests.unit.contracts.test_contracts import schema_name_of
from worker.errors import JobRejected
from worker.queue.ingest import parse_job, validate_job
from worker.retrain.jobs import parse_retrain_job

EXAMPLES = sorted((Path(contracts.__file__).parent / "examples").glob("*.json"))
RETRAIN: dict[str, Any] = {
    "job_id": "retrain-1",
    "dataset": {"kind": "prefix", "prefix": "s3://training-data/cifake/"},
}
CLASSIFY: dict[str, Any] = {
    "job_id": "job-1",
    "inputs": {"kind": "uris", "uris": ["s3://inp/a.jpg"]},
    "output": {"uri": "s3://out/results"},
}

# (model, message, the field the error must name, what the wrong value is)
COERCIONS = [
    (RetrainJob, {**RETRAIN, "budget": {"seconds": "60"}}, "budget.seconds", "string for number"),
    (RetrainJob, {**RETRAIN, "cv_folds": 5.0}, "cv_folds", "float for int"),
    (RetrainJob, {**RETRAIN, "seed": "7"}, "seed", "string for int"),
    (RetrainJob, {**RETRAIN, "holdout": {"share": True}}, "holdout.share", "bool for number"),
    (ClassifyJob, {**CLASSIFY, "priority": 1}, "priority", "number for literal"),
    (ClassifyJob, {**CLASSIFY, "job_id": 42}, "job_id", "number for string"),
    (ClassifyJob, {**CLASSIFY, "schema_version": "1"}, "schema_version", "string for const"),
    (ClassifyJob, {**CLASSIFY, "submitted_at": 1764295200}, "submitted_at", "number for time"),
]
COERCION_IDS = [case[3] for case in COERCIONS]


def field_paths(exc: ValidationError) -> list[str]:
    return [".".join(str(part) for part in error["loc"]) for error in exc.errors()]


@pytest.mark.parametrize(("model", "message", "field", "what"), COERCIONS, ids=COERCION_IDS)
def test_json_text_with_a_coercible_value_is_rejected_naming_the_field(
    model: type[ClassifyJob | RetrainJob], message: dict[str, Any], field: str, what: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        model.model_validate_json(json.dumps(message))
    assert field_paths(exc.value) == [field], what


@pytest.mark.parametrize(("model", "message", "field", "what"), COERCIONS, ids=COERCION_IDS)
def test_a_decoded_json_value_is_held_to_the_same_rules(
    model: type[ClassifyJob | RetrainJob], message: dict[str, Any], field: str, what: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        model.from_json_value(message)
    assert field_paths(exc.value) == [field], what


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({**RETRAIN, "budget": {"seconds": "60"}}, "budget.seconds"),
        ({**RETRAIN, "cv_folds": 5.0}, "cv_folds"),
    ],
)
def test_the_retrain_entry_point_rejects_coercions(message: dict[str, Any], field: str) -> None:
    with pytest.raises(JobRejected, match=rf"schema violation: {field}: "):
        parse_retrain_job(message)


@pytest.mark.parametrize(
    ("message", "field"),
    [({**CLASSIFY, "priority": 1}, "priority"), ({**CLASSIFY, "job_id": 42}, "job_id")],
)
def test_the_classify_entry_points_reject_coercions(message: dict[str, Any], field: str) -> None:
    with pytest.raises(JobRejected, match=rf"schema violation: {field}: "):
        validate_job(message)  # the Celery task's argument, decoded from JSON
    with pytest.raises(JobRejected, match=rf"schema violation: {field}: "):
        parse_job(json.dumps(message).encode(), max_bytes=1 << 20)  # a plain JSON body


def test_json_native_forms_parse_from_a_decoded_value() -> None:
    job = RetrainJob.from_json_value(
        {
            **RETRAIN,
            "budget": {"seconds": 60, "trials": 3},  # an int is a JSON number: fine for float
            "promotion": {"mode": "always"},
            "submitted_at": "2026-11-28T02:00:00Z",
        }
    )
    assert job.budget.seconds == 60.0
    assert job.submitted_at == datetime(2026, 11, 28, 2, tzinfo=UTC)
    failed = ImageResult.from_json_value(
        {"uri": "a.jpg", "error": {"code": "not_found", "message": "gone"}}
    )
    assert failed.error is not None
    assert failed.error.code is ErrorCode.NOT_FOUND
    card_part = Preprocessing.from_json_value({"input_size": [32, 32]})
    assert card_part.input_size == (32, 32)


def test_python_code_builds_messages_from_python_objects() -> None:
    """Strict Python validation wants the Python types; coercions fail there too."""
    when = datetime(2026, 11, 28, 2, tzinfo=UTC)
    job = RetrainJob.model_validate({**RETRAIN, "submitted_at": when})
    assert job.submitted_at == when
    with pytest.raises(ValidationError):
        RetrainJob.model_validate({**RETRAIN, "cv_folds": "5"})


def test_a_value_json_cannot_hold_did_not_come_off_the_wire() -> None:
    with pytest.raises(TypeError):
        RetrainJob.from_json_value({**RETRAIN, "submitted_at": datetime.now(UTC)})


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_strictly_as_text_and_as_a_decoded_value(example: Path) -> None:
    model = PUBLISHED[schema_name_of(example)]
    text = example.read_text()
    assert model.model_validate_json(text, strict=True) == model.model_validate_json(text)
    assert model.from_json_value(json.loads(text)) == model.model_validate_json(text)


def test_strictness_is_set_once_for_every_contract() -> None:
    for model in PUBLISHED.values():
        assert model.model_config.get("strict") is True, model.__name__
