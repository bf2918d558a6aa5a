"""Plain JSON jobs: for producers that speak AMQP or SQS but not Celery's protocol.

A producer in any language publishes a bare JSON body (RabbitMQ: default exchange,
routing key = the queue name; SQS: ``send-message`` to the queue):

- a ``ClassifyJob`` to ``<prefix>-jobs``: forwarded to the ``accept_job`` task on
  ``<prefix>-classify`` or ``<prefix>-bulk`` (by its priority);
- a ``RetrainJob`` to ``<prefix>-retrain-jobs``: forwarded to the ``retrain`` task on
  ``<prefix>-retrain``, where a retrain worker picks it up.

``PlainJsonIngest``, a consumer bootstep, reads the plain-JSON queues this worker
was started for (``worker.queue.app.select_queues``), validates each body (size,
UTF-8, JSON, then the schema), forwards it as the same task the Python client
sends, and acknowledges it. What fails validation goes to the dead-letter queue
with the reason; both queues give the same reasons (``oversize: ...``,
``not JSON: ...``, ``schema violation: <field>: ...``).

The handler runs on the worker's consumer thread, so it does only cheap work;
listing inputs, checking the model and training happen in the tasks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import bootsteps
from kombu import Consumer, Message, Queue
from pydantic import ValidationError

from contracts import ClassifyJob, RetrainJob, describe_validation_error
from worker.errors import JobRejected
from worker.logs import get_logger
from worker.queue.deadletter import dead_letter, dead_letter_sink
from worker.queue.topology import (
    TASK_ACCEPT,
    TASK_RETRAIN,
    QueueNames,
    amqp_queues,
    declare_amqp_topology,
)
from worker.settings import Settings, get_settings

log = get_logger(__name__)

INGEST_PREFETCH = 32

_Job = TypeVar("_Job", ClassifyJob, RetrainJob)

PLAIN_JSON_SELECTION = "synthdetect_plain_json_queues"
"""Key in ``app.conf``: the plain-JSON queues this worker consumes (set at start-up by
``worker.queue.app``; absent: all of them)."""


def decode_body(body: bytes | str, max_bytes: int) -> Any:
    """The decoded JSON value of a message body; ``JobRejected`` says what is wrong.

    Order: size, UTF-8, JSON.
    """
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > max_bytes:
        raise JobRejected(f"oversize: message is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobRejected(f"not JSON: body is not UTF-8 ({exc.reason})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobRejected(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def parse_job(body: bytes | str, max_bytes: int) -> ClassifyJob:
    """A validated ``ClassifyJob`` from a message body; ``JobRejected`` names what is wrong
    (pydantic's error names the field)."""
    return validate_job(decode_body(body, max_bytes))


def parse_retrain_job(body: bytes | str, max_bytes: int) -> RetrainJob:
    """A validated ``RetrainJob`` from a message body, by the same rules as ``parse_job``."""
    return _validated(RetrainJob, decode_body(body, max_bytes))


def validate_job(data: Any) -> ClassifyJob:
    """A ``ClassifyJob`` from decoded JSON; ``JobRejected`` lists every invalid field.

    Validated by the wire's strict JSON rules (``Contract.from_json_value``): the
    Celery task receives the job as a dict decoded from JSON, and a dict passed in
    Python mode would accept neither ISO datetimes (too strict) nor refuse ``"60"``
    for a number (if lax).
    """
    return _validated(ClassifyJob, data)


def _validated(model: type[_Job], data: Any) -> _Job:
    try:
        return model.from_json_value(data)
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

    So the plain JSON queues, the retrain queue and the dead-letter queue exist
    before any producer needs them, and before Celery's delayed-delivery step binds
    every task queue (``worker.queue.consumer`` orders that step after this one).
    SQS queues are made by ``synthdetect queues setup`` (or at start-up with
    ``SYNTHDETECT_SQS_CREATE_QUEUES``).
    """

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        settings = get_settings()
        if settings.broker_kind == "amqp":
            declare_amqp_topology(c.connection, settings)


@dataclass(frozen=True)
class Forward:
    """Where a valid job of one plain-JSON queue goes: task name and task queue."""

    task: str
    queue: str
    job_id: str
    args: list[dict[str, Any]]


def classify_forward(body: bytes | str, settings: Settings, names: QueueNames) -> Forward:
    """``<prefix>-jobs``: a ClassifyJob, to ``accept_job`` on its priority's queue."""
    job = parse_job(body, settings.max_message_bytes)
    args = [job.model_dump(mode="json")]
    return Forward(TASK_ACCEPT, names.for_priority(job.priority), job.job_id, args)


def retrain_forward(body: bytes | str, settings: Settings, names: QueueNames) -> Forward:
    """``<prefix>-retrain-jobs``: a RetrainJob, to the ``retrain`` task's queue."""
    job = parse_retrain_job(body, settings.max_message_bytes)
    args = [job.model_dump(mode="json", exclude_none=True)]
    return Forward(TASK_RETRAIN, names.retrain, job.job_id, args)


Router = Callable[[bytes | str, Settings, QueueNames], Forward]


def routers(names: QueueNames) -> dict[str, Router]:
    """Each plain-JSON queue and how its bodies are validated and forwarded."""
    return {names.jobs: classify_forward, names.retrain_jobs: retrain_forward}


class PlainJsonIngest(bootsteps.ConsumerStep):
    """Consumes the selected plain-JSON queues and forwards valid jobs as tasks."""

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
        selected = self._app.conf.get(PLAIN_JSON_SELECTION)
        declared = amqp_queues(settings) if settings.broker_kind == "amqp" else {}
        consumers = []
        for name, route in routers(names).items():
            if selected is not None and name not in selected:
                continue
            handler = _IngestHandler(self._app, settings, names, name, route)
            consumers.append(
                Consumer(
                    channel,
                    queues=[declared.get(name) or Queue(name)],
                    on_message=handler,
                    prefetch_count=INGEST_PREFETCH,
                    no_ack=False,
                )
            )
        return consumers


class _IngestHandler:
    def __init__(
        self, app: Any, settings: Settings, names: QueueNames, source: str, route: Router
    ) -> None:
        self._app = app
        self._settings = settings
        self._names = names
        self._source = source
        self._route = route
        self._dead = dead_letter_sink(app, settings)

    def __call__(self, message: Message) -> None:
        # Bytes from AMQP, str from SQS; an empty body is rejected like any other bad body.
        body: bytes | str = message.body or b""
        try:
            forward = self._route(body, self._settings, self._names)
        except JobRejected as rejected:
            try:
                dead_letter(self._dead, body, rejected.reason, self._source, job_id_of(body))
            except Exception:
                log.exception("dead_letter_failed", reason=rejected.reason)
                message.requeue()
                return
            message.ack()
            return
        try:
            self._app.send_task(forward.task, args=forward.args, queue=forward.queue, retry=True)
        except Exception:
            log.exception("ingest_forward_failed", job_id=forward.job_id)
            message.requeue()
            return
        log.info("job_received", job_id=forward.job_id, via=self._source, queue=forward.queue)
        message.ack()
