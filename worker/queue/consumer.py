"""The worker's Celery consumer: poison goes to the dead-letter queue, topology before binds.

Celery's own consumer logs a message it cannot use and drops it: an undecodable
body or a content type other than JSON is logged at CRITICAL and acknowledged,
a message without a task header ("unknown message"), an unknown task name or
an invalid task message is logged and rejected, which the broker dead-letters
without a reason. ``SynthdetectConsumer`` publishes each of them to
``<prefix>-dead`` with the reason (``worker.queue.deadletter``'s envelope, and
the ``x-synthdetect-reason`` header) and then acknowledges the original; if the
dead letter cannot be published, the original is requeued, so it is never lost
(the broker's redelivery cap still ends a loop).

Its blueprint also runs Celery's native delayed-delivery step only after
``TopologySetup`` declared every queue: that step binds *every* task queue of
the app, including ``<prefix>-retrain`` on workers that do not consume it, and
when it ran first (bootsteps with no ordering between them start in any order)
the bind failed with ``NOT_FOUND`` and delayed delivery was off for that worker.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.exceptions import ContentDisallowed

from worker.logs import get_logger
from worker.queue.deadletter import DeadLetterSink, dead_letter, dead_letter_sink
from worker.queue.topology import QueueNames
from worker.settings import get_settings

log = get_logger(__name__)

_DELAYED_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"
_DELAY_PREFIX = re.compile(r"^(?:[01]\.)+")
"""Native delayed delivery prefixes the routing key with the delay's bits (``0.1.0.``)."""


class DelayedDeliveryAfterTopology(DelayedDelivery):
    """Celery's delayed-delivery step, started after ``TopologySetup``."""

    requires = (
        "celery.worker.consumer.tasks:Tasks",  # DelayedDelivery's own requirement
        "worker.queue.ingest:TopologySetup",
    )


class SynthdetectConsumer(Consumer):
    """Celery's consumer, with poison dead-lettered (see the module docstring)."""

    # celery-types declares Blueprint as a plain attribute, which mypy will not subclass.
    class Blueprint(Consumer.Blueprint):  # type: ignore[misc,valid-type]
        default_steps: ClassVar[list[str]] = [
            "worker.queue.consumer:DelayedDeliveryAfterTopology" if step == _DELAYED_STEP else step
            for step in Consumer.Blueprint.default_steps
        ]

    _dead_letters: DeadLetterSink | None = None

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if isinstance(exc, ContentDisallowed):
            self._dead_letter(message, _wrong_content_type(message))
            return
        reason = (
            f"undecodable body: {exc} (content type {message.content_type!r}, "
            f"encoding {message.content_encoding!r})"
        )
        self._dead_letter(message, reason)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        names = QueueNames.from_settings(get_settings())
        self._dead_letter(
            message,
            "not a task message: it has no Celery task header; plain JSON jobs go to "
            f"{names.jobs} (ClassifyJob) or {names.retrain_jobs} (RetrainJob)",
        )

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (message.headers or {}).get("task")
        self._dead_letter(message, f"unknown task {name!r}: no such task on this worker")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if isinstance(exc, ContentDisallowed):  # how Celery reports a task header on pickle
            self._dead_letter(message, _wrong_content_type(message))
            return
        self._dead_letter(message, f"invalid task message: {exc}")

    def _dead_letter(self, message: Any, reason: str) -> None:
        source = source_queue(message.delivery_info or {})
        try:
            if self._dead_letters is None:
                self._dead_letters = dead_letter_sink(self.app, get_settings())
            body = message.body or b""
            dead_letter(self._dead_letters, body, reason, source, task_job_id(message))
        except Exception:
            log.exception("dead_letter_failed", reason=reason, queue=source)
            _settle(message, requeue=True)  # kept: the broker's redelivery cap ends a loop
            return
        _settle(message)


def _wrong_content_type(message: Any) -> str:
    return (
        f"wrong content type: {message.content_type!r} is not accepted "
        "(task messages are application/json)"
    )


def _settle(message: Any, requeue: bool = False) -> None:
    """Ack (or, with ``requeue``, reject back to the queue); a lost connection only logs:
    the broker redelivers what was never settled."""
    try:
        if requeue:
            message.reject(requeue=True)
        else:
            message.ack()
    except Exception:
        log.exception("message_settle_failed", requeue=requeue)


def source_queue(delivery_info: dict[str, Any]) -> str:
    """The queue a message came from: SQS names its queue's URL; on RabbitMQ every queue
    is bound by its own name, so the routing key is the name (after any delayed-delivery
    prefix)."""
    sqs_url = delivery_info.get("sqs_queue")
    if sqs_url:
        return str(sqs_url).rstrip("/").rsplit("/", 1)[-1]
    routing_key = str(delivery_info.get("routing_key") or "")
    return _DELAY_PREFIX.sub("", routing_key) or "unknown"


def task_job_id(message: Any) -> str | None:
    """The ``job_id`` in a task message's first argument (Celery protocol 2), if any."""
    try:
        args = json.loads(message.body)[0]
        value = args[0].get("job_id") if isinstance(args[0], dict) else args[0]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return value if isinstance(value, str) else None
