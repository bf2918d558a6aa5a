"""Dead letters with a reason: where messages go that can never succeed.

The brokers dead-letter on their own what exceeds the redelivery cap (RabbitMQ
``x-delivery-limit`` + dead-letter exchange, SQS redrive policy), but their
records say only *that* a message died (``x-death``, a receive count), never
*why*. Messages the worker itself rejects (not JSON, a schema violation, an
unknown model, an oversize job, a task that failed for good) are therefore
published to the dead-letter queue by the worker, as a JSON envelope::

    {"reason": "...", "source_queue": "synthdetect-jobs", "job_id": "..." | null,
     "dead_lettered_at": "2026-11-28T12:00:00+00:00", "message": "<the original body>",
     "truncated": false}

with the reason also in a header (AMQP ``x-synthdetect-reason``) or message
attribute (SQS ``reason``), and then the original is acknowledged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from celery import Celery

from worker.logs import get_logger
from worker.metrics import record_dead_letter
from worker.queue.topology import QueueNames, amqp_queues, dead_letter_exchange, sqs_client
from worker.settings import Settings

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient

log = get_logger(__name__)

REASON_HEADER = "x-synthdetect-reason"
MAX_KEPT_BODY_BYTES = 64 * 1024
"""Longer original bodies are cut (and marked ``truncated``) so the envelope fits the queue."""


class DeadLetterSink(Protocol):
    def send(self, body: bytes | str, reason: str, source_queue: str, job_id: str | None) -> None:
        """Publish one dead letter; raises the broker's error if it cannot."""
        ...


def envelope(body: bytes | str, reason: str, source_queue: str, job_id: str | None) -> bytes:
    """The dead letter's JSON body (see the module docstring)."""
    raw = body.encode() if isinstance(body, str) else body
    kept = raw[:MAX_KEPT_BODY_BYTES]
    return json.dumps(
        {
            "reason": reason,
            "source_queue": source_queue,
            "job_id": job_id,
            "dead_lettered_at": datetime.now(UTC).isoformat(),
            "message": kept.decode("utf-8", errors="replace"),
            "truncated": len(kept) < len(raw),
        }
    ).encode()


class AmqpDeadLetters:
    """Publishes to the dead-letter exchange over the app's producer pool."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._exchange = dead_letter_exchange(settings)
        names = QueueNames.from_settings(settings)
        self._queue = amqp_queues(settings)[names.dead]

    def send(self, body: bytes | str, reason: str, source_queue: str, job_id: str | None) -> None:
        with self._app.producer_pool.acquire(block=True) as producer:
            producer.publish(
                envelope(body, reason, source_queue, job_id),
                exchange=self._exchange,
                routing_key=self._queue.routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                headers={REASON_HEADER: reason[:1000]},
                declare=[self._queue],
                delivery_mode=2,
                retry=True,
            )


class SqsDeadLetters:
    """Sends a plain JSON body (not a kombu envelope) to the dead-letter SQS queue."""

    def __init__(self, settings: Settings, client: SQSClient | None = None) -> None:
        self._client = client or sqs_client(settings)
        self._dead = QueueNames.from_settings(settings).dead
        self._url: str | None = None

    def send(self, body: bytes | str, reason: str, source_queue: str, job_id: str | None) -> None:
        if self._url is None:
            self._url = self._client.get_queue_url(QueueName=self._dead)["QueueUrl"]
        self._client.send_message(
            QueueUrl=self._url,
            MessageBody=envelope(body, reason, source_queue, job_id).decode(),
            MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:1000]}},
        )


def dead_letter_sink(app: Celery, settings: Settings) -> DeadLetterSink:
    """The sink for the configured broker."""
    if settings.broker_kind == "sqs":
        return SqsDeadLetters(settings)
    return AmqpDeadLetters(app, settings)


def dead_letter(
    sink: DeadLetterSink, body: bytes | str, reason: str, source_queue: str, job_id: str | None
) -> None:
    """Send and log one dead letter (the log line carries the reason, never the body)."""
    sink.send(body, reason, source_queue, job_id)
    record_dead_letter(reason, source_queue)
    log.warning("message_dead_lettered", reason=reason, queue=source_queue, job_id=job_id)
