"""Validating job messages: every rejection says why, naming the field."""

from __future__ import annotations

import json

import pytest

from contracts import RetrainJob
from worker.errors import JobRejected
from worker.queue.ingest import job_id_of, parse_job, parse_retrain_job, routers
from worker.queue.topology import TASK_ACCEPT, TASK_RETRAIN, QueueNames
from worker.settings import Settings

GOOD = {
    "job_id": "j-1",
    "inputs": {"kind": "uris", "uris": ["s3://images/a.jpg"]},
    "output": {"uri": "s3://results/x"},
}


def test_a_valid_body_parses() -> None:
    job = parse_job(json.dumps(GOOD).encode(), 10_000)
    assert job.job_id == "j-1"
    assert job.priority == "interactive"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"x" * 2000, "oversize"),
        (b"\xff\xfe{", "not JSON: body is not UTF-8"),
        (b"this is not json", "not JSON"),
        (json.dumps({**GOOD, "inputs": {"kind": "uris", "uris": ["http://a/b"]}}), "inputs.uris"),
        (json.dumps({**GOOD, "colour": "red"}), "colour: Extra inputs are not permitted"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "output"}), "output: Field required"),
        (json.dumps([GOOD]), "schema violation"),
    ],
)
def test_invalid_bodies_are_rejected_with_a_reason(body: bytes | str, reason: str) -> None:
    with pytest.raises(JobRejected) as caught:
        parse_job(body, 1000)
    assert reason in caught.value.reason


def test_job_id_of_invalid_bodies() -> None:
    assert job_id_of(json.dumps({"job_id": "abc", "x": 1})) == "abc"
    assert job_id_of(b"not json") is None
    assert job_id_of(b"[1, 2]") is None


# --- both plain-JSON queues: same rules, their own task ---------------------------------------

RETRAIN = {"job_id": "r-1", "dataset": {"kind": "prefix", "prefix": "s3://data/labelled/"}}
NAMES = QueueNames.from_settings(Settings(queue_prefix="t1"))


def test_each_plain_json_queue_forwards_to_its_task() -> None:
    settings = Settings(queue_prefix="t1")
    route = routers(NAMES)
    assert set(route) == {"t1-jobs", "t1-retrain-jobs"}
    classify = route["t1-jobs"](json.dumps({**GOOD, "priority": "bulk"}), settings, NAMES)
    assert (classify.task, classify.queue, classify.job_id) == (TASK_ACCEPT, "t1-bulk", "j-1")
    retrain = route["t1-retrain-jobs"](json.dumps(RETRAIN).encode(), settings, NAMES)
    assert (retrain.task, retrain.queue, retrain.job_id) == (TASK_RETRAIN, "t1-retrain", "r-1")
    assert retrain.args == [
        RetrainJob.from_json_value(RETRAIN).model_dump(mode="json", exclude_none=True)
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"x" * 2000, "oversize"),
        (b"{not json", "not JSON"),
        (json.dumps({**RETRAIN, "cv_folds": 1}), "schema violation: cv_folds"),
        (
            json.dumps({**RETRAIN, "dataset": {"kind": "prefix", "prefix": "s3://data/../x/"}}),
            "'..'",
        ),
        (json.dumps(GOOD), "schema violation: dataset: Field required"),
    ],
)
def test_invalid_retrain_bodies_get_the_same_reasons(body: bytes | str, reason: str) -> None:
    with pytest.raises(JobRejected) as caught:
        parse_retrain_job(body, 1000)
    assert reason in caught.value.reason


def test_a_classify_job_with_a_traversing_output_is_rejected_naming_the_field() -> None:
    body = json.dumps({**GOOD, "output": {"uri": "s3://results/tenant-a/../../other/x"}})
    with pytest.raises(JobRejected) as caught:
        parse_job(body, 10_000)
    assert caught.value.reason == (
        "schema violation: output.uri: Value error, "
        "a '..' segment in the key is not allowed (no relative paths)"
    )
