"""worker.metrics: the reference table in docs/operations.md, bounded labels, recorders.

The table between the metrics-table markers is generated from ``METRICS``
(``.venv/bin/python -m worker.metrics --markdown``) and must not drift from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from contracts import ErrorCode, ImageError, ImageResult, ModelId
from worker.metrics import (
    METRICS,
    all_exposed_names,
    dead_letter_reason_class,
    markdown_table,
    record_model_serving,
    record_results,
)

REPO = Path(__file__).parents[2]
OPERATIONS = REPO / "docs" / "operations.md"
START = "<!-- metrics-table:start -->"
END = "<!-- metrics-table:end -->"


def test_the_operations_guide_lists_every_metric_as_the_code_defines_it() -> None:
    text = OPERATIONS.read_text()
    assert text.count(START) == 1
    assert text.count(END) == 1
    table = text.split(START)[1].split(END)[0]
    assert table.strip() == markdown_table().strip(), (
        "docs/operations.md's metrics table is out of date: replace the lines between the "
        "metrics-table markers with `.venv/bin/python -m worker.metrics --markdown`"
    )


def test_every_metric_is_listed_once_with_help_text() -> None:
    names = [m._name for m in METRICS]
    assert len(names) == len(set(names))
    assert all(name.startswith("synthdetect_") for name in names)
    assert all(m._documentation for m in METRICS)
    registered = {name for name in REGISTRY._names_to_collectors if name.startswith("synthdetect_")}
    known = all_exposed_names() | set(names)
    assert registered <= known, "a metric is registered but missing from METRICS"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("not JSON: Expecting value at line 1 column 1", "not_json"),
        ("schema violation: inputs: field required", "schema_violation"),
        ("oversize: the job has more than 200000 images", "oversize"),
        ("unknown model: no 'production' alias for 'x'", "unknown_model"),
        ("input not found: s3://b/manifest.jsonl", "input_not_found"),
        ("manifest s3://b/m.jsonl line 3: not JSON", "bad_manifest"),
        ("s3://b/x.tar is not a readable tar archive: truncated", "bad_tar"),
        ("callback secret_ref 'team-a' is not configured", "callback_secret_missing"),
        ("job_id 'j1' was already used for a different job", "job_id_reused"),
        ("retrain needs a model registry to publish to: ...", "no_registry"),
        ("StorageError: cannot read s3://b/k: timed out", "task_failed"),
        ("something nobody foresaw", "other"),
    ],
)
def test_dead_letter_reasons_become_a_bounded_class(reason: str, expected: str) -> None:
    assert dead_letter_reason_class(reason) == expected


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def labelled(uri: str, label: str, confidence: float, model: ModelId) -> ImageResult:
    other = "synthetic" if label == "real" else "real"
    scores = {label: confidence, other: round(1 - confidence, 6)}
    return ImageResult(uri=uri, label=label, confidence=confidence, scores=scores, model=model)


def test_results_count_labels_and_abstentions_by_model_version_and_errors_by_code() -> None:
    model = ModelId(name="metrics-test", version="7")
    results = [
        labelled("s3://b/1", "real", 0.9, model),
        labelled("s3://b/2", "real", 0.8, model),
        labelled("s3://b/3", "synthetic", 0.7, model),
        ImageResult(uri="s3://b/4", error=ImageError(code=ErrorCode.CORRUPT_IMAGE, message="bad")),
        ImageResult(
            uri="s3://b/5",
            error=ImageError(code=ErrorCode.OUT_OF_DOMAIN, message="unlike the training images"),
            model=model,
        ),
    ]
    before_errors = sample("synthdetect_image_errors_total", code="corrupt_image")
    record_results(results)
    labels = {"model": "metrics-test", "version": "7"}
    assert sample("synthdetect_images_total", **labels, label="real") == 2
    assert sample("synthdetect_images_total", **labels, label="synthetic") == 1
    assert sample("synthdetect_image_errors_total", code="corrupt_image") == before_errors + 1
    assert sample("synthdetect_images_total", **labels, label="abstained") == 1
    assert sample("synthdetect_image_errors_total", code="out_of_domain") == 0


def test_a_new_serving_version_is_a_swap_the_first_is_not() -> None:
    record_model_serving("swap-test", "1", None)
    assert sample("synthdetect_model_swaps_total", model="swap-test") == 0
    assert sample("synthdetect_model_serving_info", model="swap-test", version="1") == 1
    record_model_serving("swap-test", "2", "1")
    assert sample("synthdetect_model_swaps_total", model="swap-test") == 1
    assert sample("synthdetect_model_serving_info", model="swap-test", version="2") == 1
    assert sample("synthdetect_model_serving_info", model="swap-test", version="1") == 0
