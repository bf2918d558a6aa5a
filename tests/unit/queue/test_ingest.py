"""Validating job messages: every rejection says why, naming the field."""

from __future__ import annotations

import json

import pytest

from worker.errors import JobRejected
from worker.queue.ingest import job_id_of, parse_job

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
