"""The queue topology on real brokers: redelivery caps end in the dead-letter queue.

A message that keeps coming back (its worker crashes, or it is nacked) must
not loop forever: RabbitMQ's quorum queue dead-letters it after
``x-delivery-limit`` returns, SQS after ``maxReceiveCount`` receives. And the
worker's own dead letters carry a readable reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import boto3
import pika
import pytest
from kombu import Connection

from tests.support.brokers import (
    RABBITMQ_URL,
    delete_amqp_topology,
    moto_sqs,
    require_rabbitmq,
    unique_prefix,
)
from worker.queue.app import create_app
from worker.queue.deadletter import REASON_HEADER, AmqpDeadLetters, SqsDeadLetters
from worker.queue.topology import (
    QueueNames,
    declare_amqp_topology,
    delete_sqs_queues,
    setup_sqs_queues,
    sqs_client,
)
from worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def amqp_settings() -> Iterator[Settings]:
    require_rabbitmq()
    settings = Settings(
        broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("topo"), max_redeliveries=2
    )
    with Connection(settings.broker_url) as connection:
        declare_amqp_topology(connection, settings)
    yield settings
    delete_amqp_topology(settings)


def get_one(
    channel: pika.adapters.blocking_connection.BlockingChannel, queue: str, timeout_s: float = 10
):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is not None:
            return method, properties, body
        time.sleep(0.1)
    return None, None, None


def test_rabbitmq_dead_letters_a_message_after_the_delivery_limit(amqp_settings: Settings) -> None:
    names = QueueNames.from_settings(amqp_settings)
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        channel = connection.channel()
        channel.basic_publish("", names.jobs, b'{"poison": true}')
        deliveries = 0
        while True:
            method, _, body = get_one(channel, names.jobs, timeout_s=3)
            if method is None:
                break
            deliveries += 1
            channel.basic_nack(method.delivery_tag, requeue=True)  # as if the worker died
            assert deliveries <= 10, "the delivery limit did not stop the loop"
        assert deliveries == amqp_settings.max_redeliveries + 1
        method, properties, body = get_one(channel, names.dead)
        assert body == b'{"poison": true}'
        assert properties.headers["x-death"][0]["queue"] == names.jobs
        channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()


def test_worker_dead_letters_carry_the_reason_on_rabbitmq(amqp_settings: Settings) -> None:
    names = QueueNames.from_settings(amqp_settings)
    sink = AmqpDeadLetters(create_app(amqp_settings), amqp_settings)
    sink.send(b"not json", "not JSON: Expecting value", names.jobs, None)
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        channel = connection.channel()
        method, properties, body = get_one(channel, names.dead)
        assert method is not None
        assert properties.headers[REASON_HEADER] == "not JSON: Expecting value"
        letter = json.loads(body)
        assert letter["reason"] == "not JSON: Expecting value"
        assert letter["message"] == "not json"
        assert letter["source_queue"] == names.jobs
        channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()


@pytest.fixture
def sqs_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto_sqs() as endpoint:
        settings = Settings(
            broker_url="sqs://",
            sqs_endpoint_url=endpoint,
            queue_prefix=unique_prefix("sqs"),
            max_redeliveries=2,
            sqs_visibility_timeout_s=30,
        )
        setup_sqs_queues(settings)
        yield settings
        delete_sqs_queues(settings)


def test_sqs_redrive_moves_a_message_after_max_receives(sqs_settings: Settings) -> None:
    client = sqs_client(sqs_settings)
    names = QueueNames.from_settings(sqs_settings)
    url = client.get_queue_url(QueueName=names.classify)["QueueUrl"]
    dead = client.get_queue_url(QueueName=names.dead)["QueueUrl"]
    client.send_message(QueueUrl=url, MessageBody="poison")
    receives = 0
    for _ in range(10):
        got = client.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=1)
        if not got.get("Messages"):
            break
        receives += 1  # received and never deleted: as if the worker died
    assert receives == sqs_settings.max_redeliveries + 1
    got = client.receive_message(QueueUrl=dead, WaitTimeSeconds=2)
    assert [m["Body"] for m in got["Messages"]] == ["poison"]


def test_worker_dead_letters_carry_the_reason_on_sqs(sqs_settings: Settings) -> None:
    names = QueueNames.from_settings(sqs_settings)
    SqsDeadLetters(sqs_settings).send("{bad", "not JSON: Expecting property name", names.jobs, None)
    client = boto3.session.Session().client(
        "sqs", region_name=sqs_settings.sqs_region, endpoint_url=sqs_settings.sqs_endpoint_url
    )
    dead = client.get_queue_url(QueueName=names.dead)["QueueUrl"]
    (message,) = client.receive_message(
        QueueUrl=dead, WaitTimeSeconds=2, MessageAttributeNames=["All"]
    )["Messages"]
    assert message["MessageAttributes"]["reason"]["StringValue"].startswith("not JSON")
    assert json.loads(message["Body"])["message"] == "{bad"
