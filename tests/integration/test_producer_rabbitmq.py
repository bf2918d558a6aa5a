"""contracts.producer against the real RabbitMQ, on queues the worker's own code declared.

A job published with ``AmqpPublisher`` must arrive in ``<prefix>-jobs`` byte for byte
as the worker's ingest parses it, persistent and typed as JSON; a job for a queue that
does not exist must raise, never be confirmed and dropped, and must not create it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest
from kombu import Connection

from contracts import ClassifyJob, RetrainJob
from contracts.producer import (
    CONTENT_TYPE,
    AmqpPublisher,
    QueueMissing,
    classify_queue,
    message_body,
    publish_amqp,
)
from tests.support.brokers import (
    RABBITMQ_URL,
    delete_amqp_topology,
    require_rabbitmq,
    unique_prefix,
)
from worker.queue.ingest import parse_job
from worker.queue.topology import QueueNames, declare_amqp_topology
from worker.settings import Settings

pytestmark = pytest.mark.integration

JOB = ClassifyJob.from_json_value(
    {
        "job_id": "moderation-7",
        "inputs": {"kind": "prefix", "prefix": "s3://uploads/2026/11/28/"},
        "output": {"uri": "s3://results/moderation"},
        "submitted_at": "2026-11-28T12:00:00Z",
    }
)


@pytest.fixture
def settings() -> Iterator[Settings]:
    require_rabbitmq()
    settings = Settings(broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("producer"))
    with Connection(settings.broker_url) as connection:
        declare_amqp_topology(connection, settings)
    yield settings
    delete_amqp_topology(settings)


@dataclass(frozen=True)
class Received:
    body: bytes
    properties: pika.BasicProperties


def get_one(queue: str, timeout_s: float = 10.0) -> Received | None:
    """The next message of ``queue`` as raw bytes (acknowledged), polling until one is there.

    pika, not kombu: py-amqp decodes bodies that carry a content encoding.
    """
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is not None:
                return Received(body, properties)
            time.sleep(0.05)
    finally:
        connection.close()
    return None


def queue_exists(name: str) -> bool:
    from amqp.exceptions import NotFound

    with Connection(RABBITMQ_URL) as connection, connection.channel() as channel:
        try:
            channel.queue_declare(queue=name, passive=True)
        except NotFound:
            return False
    return True


def test_a_job_arrives_intact_on_the_queue_the_worker_declared(settings: Settings) -> None:
    names = QueueNames.from_settings(settings)
    assert publish_amqp(JOB, settings.broker_url, settings.queue_prefix) == names.jobs
    message = get_one(names.jobs)
    assert message is not None
    assert message.body == message_body(JOB)
    assert parse_job(message.body, settings.max_message_bytes) == JOB
    assert message.properties.content_type == CONTENT_TYPE
    assert message.properties.content_encoding == "utf-8"
    assert message.properties.delivery_mode == 2  # persistent


def test_one_publisher_sends_many_jobs_in_order(settings: Settings) -> None:
    jobs = [JOB.model_copy(update={"job_id": f"moderation-{i}"}) for i in range(5)]
    with AmqpPublisher(settings.broker_url, settings.queue_prefix) as publisher:
        for job in jobs:
            publisher.publish(job)
    arrived = [get_one(classify_queue(settings.queue_prefix)) for _ in jobs]
    assert [parse_job(m.body, 1 << 20) for m in arrived if m is not None] == jobs


def test_publishing_to_an_undeclared_queue_raises_and_declares_nothing(settings: Settings) -> None:
    other = unique_prefix("nobody")
    with pytest.raises(QueueMissing, match=f"queue {other}-jobs does not exist"):
        publish_amqp(JOB, settings.broker_url, other)
    assert not queue_exists(f"{other}-jobs")


def test_a_queue_deleted_after_the_check_makes_the_broker_return_the_job(
    settings: Settings,
) -> None:
    """The passive check runs once per queue; ``mandatory`` covers the queue vanishing later."""
    queue = classify_queue(settings.queue_prefix)
    with AmqpPublisher(settings.broker_url, settings.queue_prefix) as publisher:
        publisher.publish(JOB)
        assert get_one(queue) is not None
        with Connection(RABBITMQ_URL) as connection, connection.channel() as channel:
            channel.queue_delete(queue)
        with pytest.raises(QueueMissing, match="unroutable"):
            publisher.publish(JOB)
        # The publisher stays usable: the worker declares the queue again, publishing works.
        with Connection(settings.broker_url) as connection:
            declare_amqp_topology(connection, settings)
        publisher.publish(JOB)
    message = get_one(queue)
    assert message is not None
    assert parse_job(message.body, 1 << 20) == JOB


def test_a_retrain_job_arrives_intact_in_the_retrain_jobs_queue(settings: Settings) -> None:
    job = RetrainJob.from_json_value(
        {"job_id": "retrain-1", "dataset": {"kind": "tar", "tar": "s3://data/train.tar"}}
    )
    queue = publish_amqp(job, settings.broker_url, settings.queue_prefix)
    assert queue == QueueNames.from_settings(settings).retrain_jobs
    message = get_one(queue)
    assert message is not None
    assert RetrainJob.model_validate_json(message.body) == job
