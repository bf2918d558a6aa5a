"""The wire format: checked-in schemas and examples, round trips, rejections naming the field.

Example messages live in ``contracts/examples/<schema name>[-<variant>].json``; the
longest published schema name that prefixes a file's name says which contract it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

import contracts
from contracts import Budget, ClassifyJob, ClassifyShard, ImageResult, ModelCard
from contracts.schema_files import PUBLISHED, SCHEMA_DIR, expected_files

EXAMPLES_DIR = Path(contracts.__file__).parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.json"))
REGENERATE = ".venv/bin/python -m contracts.schema_files"


def schema_name_of(example: Path) -> str:
    """The published schema an example file belongs to, from its name."""
    matches = [
        name for name in PUBLISHED if example.stem == name or example.stem.startswith(f"{name}-")
    ]
    assert matches, f"{example.name} does not start with a published schema name"
    return max(matches, key=len)


def load_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validate_with_schema(name: str, message: object) -> None:
    schema = load_schema(name)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator_class(schema, format_checker=validator_class.FORMAT_CHECKER).validate(message)


def error_paths(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [".".join(str(part) for part in error["loc"]) for error in exc.value.errors()]


# --- checked-in files ------------------------------------------------------------------


def test_schema_files_on_disk_match_the_models() -> None:
    expected = expected_files()
    on_disk = {path: path.read_text() for path in SCHEMA_DIR.glob("*.schema.json")}
    stale = sorted(
        path.name
        for path in expected.keys() | on_disk.keys()
        if expected.get(path) != on_disk.get(path)
    )
    assert not stale, (
        f"JSON Schemas drifted from contracts ({', '.join(stale)}); run `{REGENERATE}`"
    )


def test_every_published_schema_has_an_example() -> None:
    covered = {schema_name_of(example) for example in EXAMPLES}
    assert covered == set(PUBLISHED)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_for_pydantic_and_json_schema(example: Path) -> None:
    name = schema_name_of(example)
    text = example.read_text()
    PUBLISHED[name].model_validate_json(text)
    validate_with_schema(name, json.loads(text))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_round_trip_through_json_gives_an_equal_message(example: Path) -> None:
    name = schema_name_of(example)
    model: type[BaseModel] = PUBLISHED[name]
    message = model.model_validate_json(example.read_text())
    written = message.model_dump_json()
    assert model.model_validate_json(written) == message
    # What the worker writes (explicit nulls, defaults filled in) is valid for producers too.
    validate_with_schema(name, json.loads(written))


def test_the_json_schema_rejects_what_pydantic_rejects_structurally() -> None:
    message = json.loads((EXAMPLES_DIR / "classify-job-prefix.json").read_text())
    with pytest.raises(jsonschema.ValidationError, match="unexpected"):
        validate_with_schema("classify-job", {**message, "colour": "blue"})
    with pytest.raises(jsonschema.ValidationError):
        validate_with_schema("classify-job", {**message, "priority": "urgent"})


# --- rejections name the field ---------------------------------------------------------

JOB: dict[str, Any] = {
    "job_id": "job-1",
    "inputs": {"kind": "uris", "uris": ["s3://inp/a.jpg"]},
    "output": {"uri": "s3://out/results"},
}


def test_unknown_fields_are_rejected_by_name() -> None:
    with pytest.raises(ValidationError) as exc:
        ClassifyJob.model_validate({**JOB, "output": {"uri": "s3://out/r", "acl": "public"}})
    assert error_paths(exc) == ["output.acl"]
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


def test_wrong_types_are_rejected_by_name() -> None:
    with pytest.raises(ValidationError) as exc:
        ClassifyJob.model_validate({**JOB, "labels": {"s3://inp/a.jpg": 3}, "priority": 1})
    assert sorted(error_paths(exc)) == ["labels.s3://inp/a.jpg", "priority"]


def test_a_bad_s3_uri_is_named_by_its_position_in_the_list() -> None:
    uris = ["s3://inp/0.jpg", "s3://inp/1.jpg", "s3://inp/2.jpg", "https://inp/3.jpg"]
    with pytest.raises(ValidationError) as exc:
        ClassifyJob.model_validate({**JOB, "inputs": {"kind": "uris", "uris": uris}})
    [path] = error_paths(exc)
    # pydantic puts the union's tag in the path: inputs.uris.uris.3
    assert path.startswith("inputs.")
    assert path.endswith("uris.3")
    assert "s3://bucket/key" in str(exc.value)


@pytest.mark.parametrize("job_id", ["has space", "slash/in/it", "-leading-dash", "", "x" * 129])
def test_job_ids_outside_the_safe_alphabet_are_rejected(job_id: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ClassifyJob.model_validate({**JOB, "job_id": job_id})
    assert error_paths(exc) == ["job_id"]


def test_job_ids_may_use_letters_digits_and_dot_underscore_colon_dash() -> None:
    assert ClassifyJob.model_validate({**JOB, "job_id": "A.b_c:d-9"}).job_id == "A.b_c:d-9"


def test_an_unknown_input_kind_names_the_discriminator() -> None:
    with pytest.raises(ValidationError) as exc:
        ClassifyJob.model_validate({**JOB, "inputs": {"kind": "ftp", "uris": ["s3://inp/a"]}})
    assert error_paths(exc) == ["inputs"]
    assert exc.value.errors()[0]["type"] == "union_tag_invalid"


LABELLED = {
    "uri": "s3://inp/a.jpg",
    "label": "real",
    "confidence": 0.9,
    "scores": {"real": 0.9, "synthetic": 0.1},
    "model": {"name": "default", "version": "1"},
}
ERROR = {"code": "not_found", "message": "no object"}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({**LABELLED, "error": ERROR}, id="both"),
        pytest.param({"uri": "s3://inp/a.jpg"}, id="neither"),
    ],
)
def test_an_image_result_has_a_label_or_an_error_never_both(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="either a label or an error"):
        ImageResult.from_json_value(fields)


def test_a_labelled_image_result_needs_its_confidence_and_scores() -> None:
    with pytest.raises(ValidationError, match="needs confidence and scores"):
        ImageResult.from_json_value({**LABELLED, "scores": None})


def test_an_unknown_error_code_is_named() -> None:
    with pytest.raises(ValidationError) as exc:
        ImageResult.from_json_value({"uri": "a.jpg", "error": {"code": "oops", "message": "m"}})
    assert error_paths(exc) == ["error.code"]


def test_a_budget_needs_seconds_or_trials() -> None:
    assert Budget(seconds=None, trials=3).trials == 3
    with pytest.raises(ValidationError, match="set seconds, trials, or both"):
        Budget(seconds=None, trials=None)


SHARD: dict[str, Any] = {
    "job_id": "job-1",
    "model": {"name": "default"},
    "output": {"uri": "s3://out/results"},
    "index": 0,
    "count": 2,
}
ITEMS = [{"uri": "s3://inp/a.jpg"}]
SLICE = {"uri": "s3://inp/x.tar", "start": 0, "end": 1024}


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param({"items": ITEMS, "tar_slice": SLICE}, id="both"),
        pytest.param({}, id="neither"),
    ],
)
def test_a_shard_carries_items_or_a_tar_slice(sources: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="either items or tar_slice"):
        ClassifyShard.model_validate({**SHARD, **sources})


@pytest.mark.parametrize(("index", "count"), [(2, 2), (5, 2)])
def test_a_shard_index_must_be_below_the_count(index: int, count: int) -> None:
    with pytest.raises(ValidationError, match="index must be < count"):
        ClassifyShard.model_validate({**SHARD, "items": ITEMS, "index": index, "count": count})


def test_a_tar_slice_uri_is_checked_and_named() -> None:
    with pytest.raises(ValidationError) as exc:
        ClassifyShard.model_validate({**SHARD, "tar_slice": {**SLICE, "uri": "/tmp/x.tar"}})
    assert error_paths(exc) == ["tar_slice.uri"]


def test_model_card_needs_a_hex_sha256_and_two_labels() -> None:
    card = json.loads((EXAMPLES_DIR / "model-card.json").read_text())
    with pytest.raises(ValidationError) as exc:
        ModelCard.from_json_value({**card, "sha256": "not-hex", "labels": ["real"]})
    assert sorted(error_paths(exc)) == ["labels", "sha256"]


def test_messages_are_immutable() -> None:
    job = ClassifyJob.model_validate(JOB)
    with pytest.raises(ValidationError, match="frozen"):
        job.job_id = "other"  # type: ignore[misc]


# --- the public API --------------------------------------------------------------------

PUBLIC_NAMES = {
    "SCHEMA_VERSION",
    # jobs
    "ClassifyJob",
    "RetrainJob",
    "ClassifyShard",
    "ModelRef",
    "UriListInput",
    "PrefixInput",
    "ManifestInput",
    "TarInput",
    "OutputLocation",
    "Callback",
    "Budget",
    "PrefixDataset",
    "ManifestDataset",
    "TarDataset",
    "Holdout",
    "PromotionPolicy",
    "ShardItem",
    "TarSlice",
    # results
    "ImageResult",
    "ImageError",
    "ErrorCode",
    "JobSummary",
    "ShardFailure",
    "RetrainSummary",
    "Counts",
    "Timings",
    "ModelId",
    "DomainCheck",
    "Provenance",
    "ProvenanceSource",
    # model card
    "ModelCard",
    "Preprocessing",
    "Calibration",
    "TrainingInfo",
    "DataSummary",
    "EvaluationMetrics",
    "DomainSummary",
    "FeatureSummary",
    # helpers
    "describe_validation_error",
}


def test_the_public_api_is_exactly_the_intended_names() -> None:
    assert set(contracts.__all__) == PUBLIC_NAMES
    assert len(contracts.__all__) == len(PUBLIC_NAMES), "__all__ lists a name twice"
    for name in contracts.__all__:
        assert getattr(contracts, name) is not None


def test_every_published_model_is_public() -> None:
    exported = {getattr(contracts, name) for name in contracts.__all__}
    assert set(PUBLISHED.values()) <= exported
