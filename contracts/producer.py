"""Sending jobs as plain JSON to RabbitMQ or SQS, without the worker.

``pip install 'synthdetect[producer]'`` brings pydantic, kombu and boto3, nothing
else: no torch, Pillow, Celery or matplotlib. The message is the job's JSON and
nothing more (``application/json``, UTF-8), the same body a producer in any other
language sends, so the worker treats both alike::

    from contracts import ClassifyJob
    from contracts.producer import AmqpPublisher

    with AmqpPublisher("amqp://user:pass@rabbit:5672//") as publisher:
        publisher.publish(ClassifyJob(...))

Queues (``prefix`` is the worker's ``SYNTHDETECT_QUEUE_PREFIX``)::

    <prefix>-jobs           ClassifyJob bodies
    <prefix>-retrain-jobs   RetrainJob bodies (forwarded to the retrain workers' queue)

Workers declare both, and a worker started without ``-Q`` consumes both; a body
that fails validation goes to ``<prefix>-dead`` with the reason, the same reasons
for both queues.

Delivery is confirmed before ``publish`` returns, or it raises ``PublishError``:

- RabbitMQ: publisher confirms; ``mandatory`` so a message no queue takes comes
  back and raises instead of vanishing; persistent delivery. The queue is checked
  with a *passive* declare, never declared here: the worker declares it, with the
  arguments it needs (quorum type, delivery limit, dead-letter exchange), and a
  declaration with other arguments would fail or, worse, win the race.
- SQS: ``SendMessage`` to the queue's URL, looked up by name; SQS answers only
  after it stored the message.

Either way the queue must exist: ``synthdetect queues setup`` makes it on either
broker, and a worker declares it when it starts on RabbitMQ (on SQS with
``SYNTHDETECT_SQS_CREATE_QUEUES``).
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

from contracts.jobs import ClassifyJob, RetrainJob

if TYPE_CHECKING:
    from kombu import Connection, Exchange, Producer
    from kombu.message import Message
    from kombu.transport.base import StdChannel
    from types_boto3_sqs.client import SQSClient

DEFAULT_QUEUE_PREFIX = "synthdetect"
"""The worker's default ``SYNTHDETECT_QUEUE_PREFIX``."""
CLASSIFY_QUEUE_SUFFIX = "-jobs"
"""``<prefix>-jobs``: plain JSON ``ClassifyJob`` bodies (the worker's ingest consumes it)."""
RETRAIN_QUEUE_SUFFIX = "-retrain-jobs"
"""``<prefix>-retrain-jobs``: plain JSON ``RetrainJob`` bodies (the worker's ingest consumes it)."""
CONTENT_TYPE = "application/json"
PUBLISH_TIMEOUT_S = 30.0
"""How long a publish may wait for the broker's confirmation before it raises."""

PlainJsonJob = ClassifyJob | RetrainJob


class PublishError(Exception):
    """The broker did not take the job; the message says why. Nothing was delivered,
    so publishing the same job again is safe (``job_id`` makes a duplicate harmless)."""


class QueueMissing(PublishError):
    """The queue does not exist (no worker has declared it yet, or a wrong prefix)."""


def classify_queue(prefix: str = DEFAULT_QUEUE_PREFIX) -> str:
    """Name of the plain JSON classify queue for ``prefix``."""
    return prefix + CLASSIFY_QUEUE_SUFFIX


def retrain_queue(prefix: str = DEFAULT_QUEUE_PREFIX) -> str:
    """Name of the plain JSON retrain queue for ``prefix``."""
    return prefix + RETRAIN_QUEUE_SUFFIX


def queue_for(job: PlainJsonJob, prefix: str = DEFAULT_QUEUE_PREFIX) -> str:
    """The queue a job of this kind goes to."""
    return retrain_queue(prefix) if isinstance(job, RetrainJob) else classify_queue(prefix)


def message_body(job: PlainJsonJob) -> bytes:
    """The job's JSON, UTF-8: what the worker's ingest parses (nulls left out)."""
    return job.model_dump_json(exclude_none=True).encode("utf-8")


def _hint(job: PlainJsonJob) -> str:
    return (
        "run `synthdetect queues setup` (or start a worker), and check that the "
        "prefix is the workers' SYNTHDETECT_QUEUE_PREFIX"
    )


def _extra_missing(module: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"contracts.producer needs {module}, which comes with the producer extra: "
        "pip install 'synthdetect[producer]'",
        name=module,
    )


# --- RabbitMQ ------------------------------------------------------------------------


class AmqpPublisher:
    """Publishes jobs over one RabbitMQ connection, opened on first use.

    After any failure the connection is dropped (a channel that saw an error may
    hold a stray confirmation) and the next ``publish`` opens a new one.
    """

    def __init__(
        self,
        broker_url: str,
        prefix: str = DEFAULT_QUEUE_PREFIX,
        *,
        connect_timeout_s: float = 10.0,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        try:
            import kombu  # noqa: F401  (fail here, with the install hint, not on publish)
        except ModuleNotFoundError as exc:
            raise _extra_missing("kombu") from exc
        self.broker_url = broker_url
        self.prefix = prefix
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._channel: StdChannel | None = None
        self._checked: set[str] = set()
        self._returned: list[str] = []

    def publish(self, job: PlainJsonJob) -> str:
        """Send ``job`` to its queue and wait for the broker's confirmation; returns the
        queue name. Raises ``QueueMissing`` or ``PublishError``."""
        from amqp.exceptions import AMQPError, MessageNacked, NotFound
        from kombu import Queue
        from kombu.exceptions import KombuError

        queue = queue_for(job, self.prefix)
        try:
            producer, channel = self._open()
            if queue not in self._checked:
                Queue(queue, channel=channel).queue_declare(passive=True)
                self._checked.add(queue)
            self._returned.clear()
            producer.publish(
                message_body(job),
                exchange="",
                routing_key=queue,
                mandatory=True,
                delivery_mode=2,  # persistent
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                declare=[],
                retry=False,
                timeout=self._publish_timeout_s,
            )
        except NotFound as exc:
            self.close()
            raise QueueMissing(f"queue {queue} does not exist on the broker: {_hint(job)}") from exc
        except (AMQPError, MessageNacked, KombuError, OSError) as exc:
            self.close()
            raise PublishError(f"publishing {job.job_id} to {queue} failed: {exc}") from exc
        if self._returned:
            # Confirmed, but only as "routed nowhere": the queue went away after the check.
            self._checked.discard(queue)
            raise QueueMissing(
                f"the broker returned {job.job_id}, {self._returned[0]}: {_hint(job)}"
            )
        return queue

    def _open(self) -> tuple[Producer, StdChannel]:
        if self._producer is None or self._channel is None:
            from kombu import Connection, Producer

            connection = Connection(
                self.broker_url,
                connect_timeout=self._connect_timeout_s,
                transport_options={"confirm_publish": True},
            )
            self._connection = connection
            self._channel = connection.channel()
            self._producer = Producer(self._channel, on_return=self._on_return)
        return self._producer, self._channel

    def _on_return(
        self, exc: Exception, exchange: Exchange | str, routing_key: str, message: Message
    ) -> None:
        self._returned.append(f"unroutable to {routing_key!r} ({exc})")

    def close(self) -> None:
        """Close the connection (``publish`` opens a new one when called again)."""
        connection, self._connection = self._connection, None
        self._producer, self._channel = None, None
        self._checked.clear()
        if connection is not None:
            connection.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def publish_amqp(job: PlainJsonJob, broker_url: str, prefix: str = DEFAULT_QUEUE_PREFIX) -> str:
    """Publish one job over a connection of its own; returns the queue name."""
    with AmqpPublisher(broker_url, prefix) as publisher:
        return publisher.publish(job)


# --- SQS -----------------------------------------------------------------------------


class SqsPublisher:
    """Sends jobs with SQS ``SendMessage``; queue URLs are looked up once per name.

    Credentials come from the standard AWS chain; ``region`` and ``endpoint_url``
    (e.g. a local SQS-compatible server) are passed to boto3 when given.
    """

    def __init__(
        self,
        prefix: str = DEFAULT_QUEUE_PREFIX,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: SQSClient | None = None,
    ) -> None:
        if client is None:
            try:
                import boto3
            except ModuleNotFoundError as exc:
                raise _extra_missing("boto3") from exc
            client = boto3.session.Session().client(
                "sqs", region_name=region, endpoint_url=endpoint_url
            )
        self.prefix = prefix
        self._client = client
        self._urls: dict[str, str] = {}

    def publish(self, job: PlainJsonJob) -> str:
        """Send ``job`` to its queue; returns SQS's ``MessageId``. Raises ``QueueMissing``
        or ``PublishError``."""
        from botocore.exceptions import BotoCoreError, ClientError

        queue = queue_for(job, self.prefix)
        try:
            url = self._url(queue)
            reply = self._client.send_message(
                QueueUrl=url, MessageBody=message_body(job).decode("utf-8")
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
                self._urls.pop(queue, None)
                raise QueueMissing(f"SQS queue {queue} does not exist: {_hint(job)}") from exc
            raise PublishError(f"sending {job.job_id} to {queue} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise PublishError(f"sending {job.job_id} to {queue} failed: {exc}") from exc
        return reply["MessageId"]

    def _url(self, queue: str) -> str:
        if queue not in self._urls:
            self._urls[queue] = self._client.get_queue_url(QueueName=queue)["QueueUrl"]
        return self._urls[queue]


def publish_sqs(
    job: PlainJsonJob,
    prefix: str = DEFAULT_QUEUE_PREFIX,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    client: SQSClient | None = None,
) -> str:
    """Send one job; returns SQS's ``MessageId``."""
    publisher = SqsPublisher(prefix, region=region, endpoint_url=endpoint_url, client=client)
    return publisher.publish(job)
