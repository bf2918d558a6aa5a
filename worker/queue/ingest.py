"""Plain JSON jobs: for producers that speak AMQP or SQS but not Celery's protocol.

A producer in any language publishes a ``ClassifyJob`` as a bare JSON body to
``<prefix>-jobs`` (RabbitMQ: default exchange, routing key = the queue name;
SQS: ``send-message`` to the queue). ``PlainJsonIngest``, a consumer bootstep
inside every worker, reads it, validates it (JSON, then the schema), hands it
to the same ``accept_job`` task the Python client sends, and acknowledges it.
What fails validation goes to the dead-letter queue with the reason.

The handler runs on the worker's consumer thread, so it does only cheap work;
listing inputs and checking the model happen in ``accept_job``.
"""

from __future__ import annotations

import json
from typing import Any

from celery import bootsteps
from kombu import Consumer, Message, Queue
from pydantic import ValidationError

from contracts import ClassifyJob, describe_validation_error
from worker.errors import JobRejected
from worker.logs import get_logger
from worker.queue.deadletter import dead_letter, dead_letter_sink
from worker.queue.topology import TASK_ACCEPT, QueueNames, amqp_queues, declare_amqp_topology
from worker.settings import Settings, get_settings

log = get_logger(__name__)

INGEST_PREFETCH = 32


def parse_job(body: bytes | str, max_bytes: int) -> ClassifyJob:
    """A validated job from a message body; ``JobRejected`` names what is wrong.

    Order: size, UTF-8, JSON, then the schema (pydantic's error names the field).
    """
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > max_bytes:
        raise JobRejected(f"oversize: message is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobRejected(f"not JSON: body is not UTF-8 ({exc.reason})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobRejected(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    return validate_job(data)


def validate_job(data: Any) -> ClassifyJob:
    """A ``ClassifyJob`` from decoded JSON; ``JobRejected`` lists every invalid field.

    Validated by the wire's strict JSON rules (``Contract.from_json_value``): the
    Celery task receives the job as a dict decoded from JSON, and a dict passed in
    Python mode would accept neither ISO datetimes (too strict) nor refuse ``"60"``
    for a number (if lax).
    """
    try:
        return ClassifyJob.from_json_value(data)
    except ValidationError as exc:
        raise JobRejected(f"schema violation: {describe_validation_error(exc)}") from exc


def job_id_of(body: bytes | str) -> str | None:
    """The ``job_id`` of a body that may be invalid, for the dead-letter record."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return None
    value = data.get("job_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


class TopologySetup(bootsteps.StartStopStep):
    """Declares every RabbitMQ queue and exchange when the worker connects.

    So the plain JSON queue, the retrain queue and the dead-letter queue exist
    before any producer needs them. SQS queues are made by ``synthdetect queues
    setup`` (or at start-up with ``SYNTHDETECT_SQS_CREATE_QUEUES``).
    """

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        settings = get_settings()
        if settings.broker_kind == "amqp":
            declare_amqp_topology(c.connection, settings)


class PlainJsonIngest(bootsteps.ConsumerStep):
    """Consumes ``<prefix>-jobs`` and forwards valid jobs to ``accept_job``."""

    requires = (
        "celery.worker.consumer.connection:Connection",
        "worker.queue.ingest:TopologySetup",
    )

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._app = parent.app

    def get_consumers(self, channel: Any) -> list[Consumer]:
        settings = get_settings()
        names = QueueNames.from_settings(settings)
        queue = (
            amqp_queues(settings)[names.jobs]
            if settings.broker_kind == "amqp"
            else Queue(names.jobs)
        )
        handler = _IngestHandler(self._app, settings, names)
        return [
            Consumer(
                channel,
                queues=[queue],
                on_message=handler,
                prefetch_count=INGEST_PREFETCH,
                no_ack=False,
            )
        ]


class _IngestHandler:
    def __init__(self, app: Any, settings: Settings, names: QueueNames) -> None:
        self._app = app
        self._settings = settings
        self._names = names
        self._dead = dead_letter_sink(app, settings)

    def __call__(self, message: Message) -> None:
        # Bytes from AMQP, str from SQS; an empty body is rejected by ``parse_job`` like any other.
        body: bytes | str = message.body or b""
        try:
            job = parse_job(body, self._settings.max_message_bytes)
        except JobRejected as rejected:
            try:
                dead_letter(self._dead, body, rejected.reason, self._names.jobs, job_id_of(body))
            except Exception:
                log.exception("dead_letter_failed", reason=rejected.reason)
                message.requeue()
                return
            message.ack()
            return
        queue = self._names.for_priority(job.priority)
        try:
            self._app.send_task(
                TASK_ACCEPT, args=[job.model_dump(mode="json")], queue=queue, retry=True
            )
        except Exception:
            log.exception("ingest_forward_failed", job_id=job.job_id)
            message.requeue()
            return
        log.info("job_received", job_id=job.job_id, via=self._names.jobs, queue=queue)
        message.ack()
