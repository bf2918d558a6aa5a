"""contracts.producer: queue names, the message body, and sending to SQS (moto in-process).

RabbitMQ publishing is tested against the real broker in
``tests/integration/test_producer_rabbitmq.py``; what importing the module loads, in
``test_producer_imports.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from contracts import ClassifyJob, RetrainJob
from contracts.producer import (
    CONTENT_TYPE,
    QueueMissing,
    SqsPublisher,
    classify_queue,
    message_body,
    publish_sqs,
    queue_for,
    retrain_queue,
)
from worker.queue.ingest import parse_job
from worker.queue.topology import QueueNames, setup_sqs_queues
from worker.retrain.jobs import parse_retrain_job
from worker.settings import Settings

PREFIX = "t-producer"
REGION = "eu-west-1"

JOB = ClassifyJob.from_json_value(
    {
        "job_id": "moderation-1",
        "inputs": {"kind": "uris", "uris": ["s3://uploads/a.jpg", "s3://uploads/b.png"]},
        "output": {"uri": "s3://results/moderation"},
        "callback": {"url": "https://hooks.example.com/x", "secret_ref": "moderation"},
        "priority": "bulk",
        "labels": {"s3://uploads/a.jpg": "real"},
        "submitted_at": "2026-11-28T12:00:00Z",
    }
)
RETRAIN = RetrainJob.from_json_value(
    {"job_id": "retrain-1", "dataset": {"kind": "tar", "tar": "s3://data/train.tar"}}
)


def test_queue_names_are_the_workers() -> None:
    names = QueueNames.from_settings(Settings(queue_prefix=PREFIX))
    assert classify_queue(PREFIX) == names.jobs == f"{PREFIX}-jobs"
    assert retrain_queue(PREFIX) == f"{PREFIX}-retrain-jobs"
    assert queue_for(JOB, PREFIX) == names.jobs
    assert queue_for(RETRAIN, PREFIX) == retrain_queue(PREFIX)
    assert classify_queue() == "synthdetect-jobs"
    assert CONTENT_TYPE == "application/json"


def test_the_body_is_the_jobs_json_and_the_worker_accepts_it() -> None:
    body = message_body(JOB)
    assert json.loads(body)["submitted_at"] == "2026-11-28T12:00:00Z"
    assert "null" not in body.decode()
    assert parse_job(body, max_bytes=1 << 20) == JOB
    assert parse_retrain_job(json.loads(message_body(RETRAIN))) == RETRAIN


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An in-process moto SQS with the worker's queues (made by the worker's own code)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        client = boto3.client("sqs", region_name=REGION)
        setup_sqs_queues(Settings(queue_prefix=PREFIX, broker_url="sqs://"), client)
        yield client


def received(client: Any, queue: str) -> list[dict[str, Any]]:
    url = client.get_queue_url(QueueName=queue)["QueueUrl"]
    reply = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    messages: list[dict[str, Any]] = reply.get("Messages", [])
    return messages


def test_a_classify_job_arrives_intact_in_the_jobs_queue(sqs: Any) -> None:
    message_id = SqsPublisher(PREFIX, region=REGION).publish(JOB)
    [message] = received(sqs, classify_queue(PREFIX))
    assert message["MessageId"] == message_id
    assert parse_job(message["Body"], max_bytes=1 << 20) == JOB


def test_a_publisher_sends_many_jobs_and_looks_the_url_up_once(sqs: Any) -> None:
    publisher = SqsPublisher(PREFIX, client=sqs)
    calls: list[str] = []
    lookup = sqs.get_queue_url

    def counting_lookup(**kwargs: Any) -> Any:
        calls.append(kwargs["QueueName"])
        return lookup(**kwargs)

    sqs.get_queue_url = counting_lookup
    jobs = [JOB.model_copy(update={"job_id": f"job-{i}"}) for i in range(3)]
    for job in jobs:
        publisher.publish(job)
    sqs.get_queue_url = lookup
    bodies = sorted(m["Body"] for m in received(sqs, classify_queue(PREFIX)))
    assert bodies == sorted(message_body(job).decode() for job in jobs)
    assert calls == [classify_queue(PREFIX)]


def test_a_missing_queue_raises_naming_it(sqs: Any) -> None:
    with pytest.raises(QueueMissing, match="SQS queue other-jobs does not exist"):
        publish_sqs(JOB, "other", client=sqs)


def test_a_retrain_job_arrives_intact_in_the_retrain_jobs_queue(sqs: Any) -> None:
    publish_sqs(RETRAIN, PREFIX, client=sqs)  # the worker's set-up made the queue
    [message] = received(sqs, retrain_queue(PREFIX))
    assert RetrainJob.model_validate_json(message["Body"]) == RETRAIN


def test_an_endpoint_url_and_region_reach_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    publisher = SqsPublisher(PREFIX, region=REGION, endpoint_url="http://127.0.0.1:9")
    client = publisher._client
    assert client.meta.region_name == REGION
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
