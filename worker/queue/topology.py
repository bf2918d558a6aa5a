"""The queue topology, for both brokers: names, RabbitMQ arguments, SQS queues and redrive.

::

    <prefix>-classify   interactive ClassifyJobs and their shards (low latency)
    <prefix>-bulk       bulk ClassifyJobs and their shards
    <prefix>-callbacks  webhook deliveries (so a slow receiver never delays scoring)
    <prefix>-retrain    retrain jobs (consumed only by workers started for it: -Q <prefix>-retrain)
    <prefix>-jobs           plain JSON ClassifyJob bodies from producers that do not speak Celery
    <prefix>-retrain-jobs   plain JSON RetrainJob bodies, forwarded to <prefix>-retrain
    <prefix>-dead           dead letters: invalid messages with a reason, and poison messages

The first four carry Celery task messages; the two plain-JSON queues are read by
``worker.queue.ingest`` and are never Celery task queues (Celery neither consumes
nor binds them).

On RabbitMQ every work queue is a quorum queue with ``x-delivery-limit`` and a
dead-letter exchange, so a message that keeps killing its worker ends in
``<prefix>-dead`` instead of looping. Task queues hang off one topic exchange,
which Celery's native delayed delivery needs (it routes delayed messages by
topic pattern). On SQS each queue has a redrive policy to ``<prefix>-dead``.

A retrain holds its message for as long as it trains, far beyond the 30 minutes
RabbitMQ allows an unacknowledged delivery by default: retrain consumers ask for
``retrain_timeout_s`` (the ``x-consumer-timeout`` consumer argument: a consumer
argument, so the queue's declaration never changes), and the SQS retrain queue
gets that visibility timeout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from kombu import Connection, Exchange, Queue

from contracts.producer import classify_queue, retrain_queue
from worker.settings import Settings

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient

TASK_ACCEPT = "synthdetect.accept_job"
TASK_SHARD = "synthdetect.classify_shard"
TASK_DELIVER = "synthdetect.deliver_callback"
TASK_RETRAIN = "synthdetect.retrain"
"""Task names: producers send by name, so they never import the worker's tasks."""


@dataclass(frozen=True)
class QueueNames:
    """Every queue name, derived from ``queue_prefix``."""

    classify: str
    bulk: str
    callbacks: str
    retrain: str
    jobs: str
    retrain_jobs: str
    dead: str

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueNames:
        p = settings.queue_prefix
        return cls(
            classify=f"{p}-classify",
            bulk=f"{p}-bulk",
            callbacks=f"{p}-callbacks",
            retrain=f"{p}-retrain",
            jobs=classify_queue(p),  # the names contracts.producer publishes to
            retrain_jobs=retrain_queue(p),
            dead=f"{p}-dead",
        )

    @property
    def task_queues(self) -> tuple[str, ...]:
        """Queues that carry Celery task messages, in priority order."""
        return (self.classify, self.bulk, self.callbacks, self.retrain)

    @property
    def plain_json_queues(self) -> tuple[str, ...]:
        """Queues of bare JSON job bodies (``worker.queue.ingest``), never of Celery tasks."""
        return (self.jobs, self.retrain_jobs)

    @property
    def work_queues(self) -> tuple[str, ...]:
        """Every queue whose messages are dead-lettered to ``dead`` when they fail."""
        return (*self.task_queues, *self.plain_json_queues)

    @property
    def default_consumed(self) -> tuple[str, ...]:
        """What a worker started without ``-Q`` consumes: everything but the retrain queue
        (which needs a worker of its own: ``-Q <prefix>-retrain``)."""
        return (self.classify, self.bulk, self.callbacks, *self.plain_json_queues)

    def for_priority(self, priority: str) -> str:
        """The queue of a job's priority (``interactive`` or ``bulk``)."""
        return self.bulk if priority == "bulk" else self.classify


# --- RabbitMQ ------------------------------------------------------------------------


def task_exchange(settings: Settings) -> Exchange:
    """The topic exchange of the task queues (a topic exchange: native delayed delivery)."""
    return Exchange(f"{settings.queue_prefix}-tasks", type="topic", durable=True)


def dead_letter_exchange(settings: Settings) -> Exchange:
    return Exchange(f"{settings.queue_prefix}-dead", type="fanout", durable=True)


def _quorum_arguments(settings: Settings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.max_redeliveries,
        "x-dead-letter-exchange": dead_letter_exchange(settings).name,
    }


def amqp_queues(settings: Settings) -> dict[str, Queue]:
    """Every RabbitMQ queue by name, with the arguments it must be declared with."""
    names = QueueNames.from_settings(settings)
    exchange = task_exchange(settings)
    queues = {
        name: Queue(
            name,
            exchange,
            routing_key=name,
            durable=True,
            queue_arguments=_quorum_arguments(settings),
            consumer_arguments=(
                {"x-consumer-timeout": settings.retrain_timeout_s * 1000}
                if name == names.retrain
                else None
            ),
        )
        for name in names.task_queues
    }
    # Plain-JSON producers publish to the default exchange with the queue's name.
    for name in names.plain_json_queues:
        queues[name] = Queue(name, durable=True, queue_arguments=_quorum_arguments(settings))
    queues[names.dead] = Queue(
        names.dead,
        dead_letter_exchange(settings),
        routing_key=names.dead,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )
    return queues


def declare_amqp_topology(connection: Connection, settings: Settings) -> None:
    """Declare exchanges and queues (idempotent: same arguments, no change)."""
    with connection.channel() as channel:
        for queue in amqp_queues(settings).values():
            queue.bind(channel).declare()


# --- SQS ---------------------------------------------------------------------------


def sqs_client(settings: Settings) -> SQSClient:
    """A boto3 SQS client; credentials come from the AWS chain."""
    return boto3.session.Session().client(
        "sqs", region_name=settings.sqs_region, endpoint_url=settings.sqs_endpoint_url
    )


def setup_sqs_queues(settings: Settings, client: SQSClient | None = None) -> dict[str, str]:
    """Create the queues if missing (dead-letter queue first); returns URLs by name.

    Work queues get ``RedrivePolicy`` (``maxReceiveCount = max_redeliveries + 1``)
    and the configured visibility timeout (the retrain queue: at least
    ``retrain_timeout_s``). CreateQueue is idempotent for equal attributes, so
    running this against existing queues is harmless.
    """
    client = client or sqs_client(settings)
    names = QueueNames.from_settings(settings)
    urls = {names.dead: client.create_queue(QueueName=names.dead)["QueueUrl"]}
    dead_arn = client.get_queue_attributes(QueueUrl=urls[names.dead], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = json.dumps(
        {"deadLetterTargetArn": dead_arn, "maxReceiveCount": str(settings.max_redeliveries + 1)}
    )
    for name in names.work_queues:
        visibility = settings.sqs_visibility_timeout_s
        if name == names.retrain:
            visibility = max(visibility, settings.retrain_timeout_s)
        urls[name] = client.create_queue(
            QueueName=name,
            Attributes={"VisibilityTimeout": str(visibility), "RedrivePolicy": redrive},
        )["QueueUrl"]
    return urls


def sqs_queue_urls(settings: Settings, client: SQSClient | None = None) -> dict[str, str]:
    """URLs of the existing queues by name (raises botocore's error if one is missing)."""
    client = client or sqs_client(settings)
    names = QueueNames.from_settings(settings)
    return {
        name: client.get_queue_url(QueueName=name)["QueueUrl"]
        for name in (*names.work_queues, names.dead)
    }


def delete_sqs_queues(settings: Settings, client: SQSClient | None = None) -> None:
    """Remove every queue of the prefix (tests and teardown)."""
    client = client or sqs_client(settings)
    for url in sqs_queue_urls(settings, client).values():
        client.delete_queue(QueueUrl=url)
