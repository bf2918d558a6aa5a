"""The JSON Schemas state the rules the models enforce: same documents, same verdict.

Each case breaks one rule of one published message, starting from its checked-in
example; the checked-in schema (with ``jsonschema``'s format checker) and the model
must both reject it. ``MODEL_ONLY`` pins the rules JSON Schema cannot express, so a
change to either side shows up here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

import contracts
from contracts.schema_files import PUBLISHED, SCHEMA_DIR

EXAMPLES_DIR = Path(contracts.__file__).parent / "examples"

Document = dict[str, Any]


def example(name: str) -> Document:
    document: Document = json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
    return document


def schema_errors(schema_name: str, document: Document) -> list[str]:
    schema = json.loads((SCHEMA_DIR / f"{schema_name}.schema.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    checker = validator_class.FORMAT_CHECKER
    assert "date-time" in checker.checkers, "install rfc3339-validator: date-time goes unchecked"
    validator = validator_class(schema, format_checker=checker)
    return [error.message for error in validator.iter_errors(document)]


def model_rejects(schema_name: str, document: Document) -> bool:
    try:
        PUBLISHED[schema_name].from_json_value(document)
    except ValidationError:
        return True
    return False


def edit(name: str, change: Callable[[Document], None]) -> Document:
    document = copy.deepcopy(example(name))
    change(document)
    return document


def set_path(path: str, value: Any) -> Callable[[Document], None]:
    """A change that sets ``a.b.0.c`` to ``value``."""

    def change(document: Document) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def drop(*fields: str) -> Callable[[Document], None]:
    def change(document: Document) -> None:
        for field in fields:
            document.pop(field, None)

    return change


def also(*changes: Callable[[Document], None]) -> Callable[[Document], None]:
    def change(document: Document) -> None:
        for one in changes:
            one(document)

    return change


LABELLED = "image-result"
FAILED = "image-result-error"
ERROR = {"code": "not_found", "message": "no object"}

# (schema, example to start from, change, the rule it breaks)
BROKEN: list[tuple[str, str, Callable[[Document], None], str]] = [
    # ImageResult: a label or an error, never both, never neither
    ("image-result", LABELLED, set_path("error", ERROR), "label and error"),
    ("image-result", FAILED, set_path("label", "real"), "error and label"),
    ("image-result", LABELLED, drop("label", "confidence", "scores"), "neither"),
    ("image-result", LABELLED, set_path("label", None), "label null, no error"),
    ("image-result", LABELLED, drop("confidence"), "label without confidence"),
    ("image-result", LABELLED, set_path("scores", None), "label without scores"),
    ("image-result", LABELLED, set_path("scores", {"not a label": 1.0}), "score key"),
    ("image-result", LABELLED, set_path("confidence", 1.5), "confidence > 1"),
    ("image-result", FAILED, set_path("error.code", "oops"), "unknown error code"),
    # ClassifyJob: s3:// addresses, http(s) callbacks, tagged inputs, types
    ("classify-job", "classify-job-uris", set_path("inputs.uris.1", "https://a/b.jpg"), "scheme"),
    (
        "classify-job",
        "classify-job-uris",
        set_path("inputs.uris.0", "s3://Images/a"),
        "bucket case",
    ),
    ("classify-job", "classify-job-uris", set_path("inputs.uris.0", "s3://ab/a.jpg"), "bucket len"),
    (
        "classify-job",
        "classify-job-uris",
        set_path("inputs.uris.0", "s3://imgs/a\nb"),
        "line break",
    ),
    ("classify-job", "classify-job-prefix", set_path("output.uri", "/tmp/results"), "output uri"),
    # ... and plain keys (contracts.keys): no traversal, empty segments, control characters
    (
        "classify-job",
        "classify-job-prefix",
        set_path("output.uri", "s3://results/tenant-a/../../other/x"),
        "dot-dot output",
    ),
    ("classify-job", "classify-job-prefix", set_path("inputs.prefix", "s3://abc/./x/"), "dot"),
    ("classify-job", "classify-job-uris", set_path("inputs.uris.0", "s3://abc/a//b"), "a//b"),
    ("classify-job", "classify-job-uris", set_path("inputs.uris.0", "s3://abc//b"), "leading //"),
    ("classify-job", "classify-job-uris", set_path("inputs.uris.0", "s3://abc/a\tb"), "tab"),
    ("classify-job", "classify-job-uris", set_path("inputs.uris.0", "s3://abc/a\n"), "trailing LF"),
    ("classify-job", "classify-job-uris", set_path("inputs.uris.0", "s3://abc/a\x7f"), "DEL"),
    ("classify-job", "classify-job-uris", set_path("inputs.uris.0", "s3://abc/..\\x"), "backslash"),
    ("classify-job", "classify-job-uris", set_path("inputs.uris.0", "s3://abc/x/.."), "final .."),
    ("classify-job", "classify-job-uris", set_path("callback.url", "ftp://x.example/h"), "ftp"),
    ("classify-job", "classify-job-uris", set_path("callback.url", "http:///hook"), "no host"),
    ("classify-job", "classify-job-uris", set_path("inputs", {"uris": ["s3://abc/b"]}), "no kind"),
    ("classify-job", "classify-job-uris", set_path("priority", 1), "priority number"),
    ("classify-job", "classify-job-uris", set_path("job_id", 42), "job_id number"),
    ("classify-job", "classify-job-uris", set_path("submitted_at", "2026-11-28T02:00:00"), "naive"),
    ("classify-job", "classify-job-uris", set_path("colour", "blue"), "unknown field"),
    # RetrainJob: a budget needs seconds or trials, ranges, tagged datasets, types
    ("retrain-job", "retrain-job", set_path("budget", {"seconds": None}), "no budget limit"),
    (
        "retrain-job",
        "retrain-job",
        set_path("budget", {"seconds": None, "trials": None}),
        "both limits null",
    ),
    ("retrain-job", "retrain-job", set_path("budget.seconds", "60"), "seconds string"),
    ("retrain-job", "retrain-job", set_path("cv_folds", 1), "one fold"),
    ("retrain-job", "retrain-job", set_path("holdout.share", 0.95), "share too large"),
    ("retrain-job", "retrain-job", set_path("dataset", {"prefix": "s3://data/x/"}), "no kind"),
    ("retrain-job", "retrain-job", set_path("dataset.prefix", "gs://data/x/"), "dataset uri"),
    ("retrain-job", "retrain-job", set_path("dataset.prefix", "s3://data/../x/"), "dataset .."),
    ("retrain-job", "retrain-job", set_path("holdout", {"prefix": "s3://data/a//"}), "holdout //"),
    # ClassifyShard: items or a tar slice, never both, never neither
    (
        "classify-shard",
        "classify-shard",
        set_path("tar_slice", {"uri": "s3://inp/x.tar", "start": 0, "end": 10}),
        "items and slice",
    ),
    ("classify-shard", "classify-shard", drop("items"), "neither items nor slice"),
    (
        "classify-shard",
        "classify-shard",
        also(drop("items"), set_path("tar_slice", {"uri": "/x.tar", "start": 0, "end": 1})),
        "slice uri",
    ),
    # JobSummary and RetrainSummary: nested results and counts keep their rules
    ("job-summary", "job-summary", set_path("results", [{"uri": "a.jpg"}]), "result: neither"),
    ("job-summary", "job-summary", set_path("counts.by_error", {"oops": 1}), "error code key"),
    ("job-summary", "job-summary", set_path("counts.by_label", {"a b": 1}), "label key"),
    ("job-summary", "job-summary", set_path("status", "done"), "status"),
    ("retrain-summary", "retrain-summary", set_path("kind", "classify"), "kind"),
    # ModelCard: checksum, labels, input size, positive std, aware times
    ("model-card", "model-card", set_path("sha256", "not-hex"), "sha256"),
    ("model-card", "model-card", set_path("labels", ["real"]), "one label"),
    ("model-card", "model-card", set_path("preprocessing.input_size", [0, 32]), "size 0"),
    ("model-card", "model-card", set_path("preprocessing.input_size", [32, 32, 3]), "3 sides"),
    ("model-card", "model-card", set_path("preprocessing.std", [0.2, 0.0, 0.2]), "std 0"),
    ("model-card", "model-card", set_path("created_at", "2026-11-28T20:45:31"), "naive time"),
    (
        "model-card",
        "model-card",
        set_path("metrics.cv.per_class_accuracy", {"a/b": 0.9}),
        "label key",
    ),
]


@pytest.mark.parametrize(
    ("schema_name", "start", "change", "rule"), BROKEN, ids=[case[3] for case in BROKEN]
)
def test_a_document_that_breaks_a_rule_is_rejected_by_schema_and_model(
    schema_name: str, start: str, change: Callable[[Document], None], rule: str
) -> None:
    valid = example(start)
    assert not schema_errors(schema_name, valid)
    assert not model_rejects(schema_name, valid)
    broken = edit(start, change)
    assert schema_errors(schema_name, broken), f"the schema accepts: {rule}"
    assert model_rejects(schema_name, broken), f"the model accepts: {rule}"


@pytest.mark.parametrize(
    ("schema_name", "document"),
    [
        pytest.param("image-result", example(FAILED), id="failed result with no label"),
        pytest.param(
            "retrain-job", edit("retrain-job", set_path("budget", {"trials": 4})), id="trials only"
        ),
        pytest.param(
            "retrain-job",
            edit("retrain-job", set_path("budget", {"seconds": None, "trials": 4})),
            id="seconds null, trials set",
        ),
        pytest.param(
            "classify-shard",
            edit(
                "classify-shard",
                also(
                    drop("items"),
                    set_path("tar_slice", {"uri": "s3://inp/x.tar", "start": 0, "end": 1}),
                ),
            ),
            id="tar slice only",
        ),
        pytest.param(
            "classify-job",
            edit("classify-job-uris", set_path("callback.url", "HTTPS://hooks.example.com/x")),
            id="upper-case scheme",
        ),
        pytest.param(
            "classify-job",
            edit(
                "classify-job-uris",
                set_path("inputs.uris", ["s3://abc/...", "s3://abc/a..b/.x/x.", "s3://abc/é #1"]),
            ),
            id="dots inside names, non-ASCII",
        ),
        pytest.param(
            "classify-job",
            edit("classify-job-prefix", set_path("inputs.prefix", "s3://abc/")),
            id="a whole bucket",
        ),
    ],
)
def test_documents_that_keep_the_rules_pass_both(schema_name: str, document: Document) -> None:
    assert not schema_errors(schema_name, document)
    assert not model_rejects(schema_name, document)


MODEL_ONLY = [
    pytest.param(
        "classify-shard",
        edit("classify-shard", also(set_path("index", 3), set_path("count", 3))),
        id="index < count compares two fields",
    ),
    pytest.param(
        "retrain-job",
        edit("retrain-job", set_path("cv_folds", 5.0)),
        id="5.0 is an integer to JSON Schema",
    ),
]


@pytest.mark.parametrize(("schema_name", "document"), MODEL_ONLY)
def test_rules_json_schema_cannot_state_are_enforced_by_the_model(
    schema_name: str, document: Document
) -> None:
    assert not schema_errors(schema_name, document)
    assert model_rejects(schema_name, document)
