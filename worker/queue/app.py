"""The Celery app: broker, queues, routing and delivery semantics; nothing else.

``celery -A worker.queue.app worker`` and ``synthdetect worker`` both start a worker
from it. The broker is chosen by ``SYNTHDETECT_BROKER_URL`` alone (amqp:// or
sqs://). Delivery is at-least-once: tasks are acknowledged after they ran
(``task_acks_late``), a message whose worker died is delivered again, and the
broker's redelivery cap (RabbitMQ ``x-delivery-limit``, SQS ``maxReceiveCount``)
sends a message that keeps failing to the dead-letter queue.

The pool is ``threads``: one process, one model, one dynamic batcher shared by
every running task, so many small jobs fill one batch; and nothing ever forks
after CUDA was initialised.

A worker consumes exactly the queues its ``-Q`` names (``select_queues``): the
Celery task queues through Celery's consumer, the plain-JSON queues
(``<prefix>-jobs``, ``<prefix>-retrain-jobs``) through ``worker.queue.ingest``.
``synthdetect worker`` without ``-Q`` names ``-classify``, ``-bulk``,
``-callbacks`` and both plain-JSON queues; ``celery worker`` without ``-Q`` consumes
the same. The retrain queue is consumed only by workers started for it alone
(``synthdetect worker -Q <prefix>-retrain``, concurrency 1, plus
``<prefix>-retrain-jobs`` if it should ingest too): a worker that was given it
together with other task queues leaves it out, so training never competes with
inference for the same cores.

The consumer is ``worker.queue.consumer.SynthdetectConsumer``: poison on the task
queues goes to the dead-letter queue with a reason, and the topology is declared
before Celery's delayed-delivery step binds the task queues.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from kombu import Queue

from worker.logs import configure_logging, get_logger
from worker.queue.ingest import PLAIN_JSON_SELECTION, PlainJsonIngest, TopologySetup
from worker.queue.topology import (
    TASK_ACCEPT,
    TASK_DELIVER,
    TASK_RETRAIN,
    TASK_SHARD,
    QueueNames,
    amqp_queues,
    setup_sqs_queues,
    sqs_queue_urls,
)
from worker.settings import Settings, get_settings

log = get_logger(__name__)


class PriorityRouter:
    """Routes job and shard tasks to the queue of their priority.

    Producers name the queue themselves; this router covers messages that do
    not (notably Celery's own retries, which would otherwise fall back to the
    default queue and move a bulk shard into the interactive queue).
    """

    def __init__(self, names: QueueNames, declared: dict[str, Any]) -> None:
        self._names = names
        self._declared = declared

    def __call__(
        self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
    ) -> dict[str, Any] | None:
        if name not in (TASK_ACCEPT, TASK_SHARD) or not args or not isinstance(args[0], dict):
            return None
        priority = str(args[0].get("priority", "interactive"))
        return {"queue": self._declared[self._names.for_priority(priority)]}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings that follow from ours (everything but SQS queue URLs)."""
    names = QueueNames.from_settings(settings)
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # The threads pool with a lane of its own for bulk shards (worker.queue.pool).
        "worker_pool": "worker.queue.pool:LanePool",
        # Poison dead-lettered with a reason; topology declared before delayed delivery binds.
        "worker_consumer": "worker.queue.consumer:SynthdetectConsumer",
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "task_default_queue": names.classify,
    }
    if settings.broker_kind == "amqp":
        declared: dict[str, Any] = amqp_queues(settings)
        # Publisher confirms: a job the producer was told is sent survives a broker crash.
        config["broker_transport_options"] = {"confirm_publish": True}
    else:
        declared = {name: Queue(name) for name in names.task_queues}
        # SQS has no fanout without SNS: no remote control, events or mingle.
        config["worker_enable_remote_control"] = False
    # The retrain queue is listed so that `-Q <prefix>-retrain` finds its declaration;
    # `keep_retrain_apart` stops other workers from consuming it.
    config["task_queues"] = [declared[n] for n in names.task_queues]
    config["task_routes"] = [
        PriorityRouter(names, declared),
        {
            TASK_DELIVER: {"queue": declared[names.callbacks]},
            TASK_RETRAIN: {"queue": declared[names.retrain]},
        },
    ]
    return config


def sqs_transport_options(settings: Settings, urls: dict[str, str]) -> dict[str, Any]:
    """Kombu SQS options: predefined queues (kombu never creates or lists queues)."""
    options: dict[str, Any] = {
        "region": settings.sqs_region,
        "visibility_timeout": settings.sqs_visibility_timeout_s,
        "wait_time_seconds": 10,
        "polling_interval": 0.2,
        "predefined_queues": {name: {"url": url} for name, url in urls.items()},
    }
    if settings.sqs_endpoint_url:
        options["is_secure"] = settings.sqs_endpoint_url.startswith("https://")
    return options


def sqs_broker_url(settings: Settings) -> str:
    """``sqs://`` with the endpoint's host and port when one is configured (moto, LocalStack)."""
    if not settings.sqs_endpoint_url:
        return "sqs://"
    host = settings.sqs_endpoint_url.split("://", 1)[1].rstrip("/")
    return f"sqs://{host}"


def create_app(settings: Settings) -> Celery:
    """A Celery app for ``settings``; SQS queue URLs are looked up when first needed."""
    celery = Celery("synthdetect", include=["worker.queue.tasks"])
    celery.conf.update(celery_config(settings))
    if settings.broker_kind == "sqs":

        @celery.on_after_configure.connect(weak=False)
        def _sqs_queues(sender: Celery, **_: Any) -> None:
            if settings.sqs_create_queues:
                urls = setup_sqs_queues(settings)
            else:
                urls = sqs_queue_urls(settings)
            sender.conf.broker_transport_options = sqs_transport_options(settings, urls)

        if settings.sqs_endpoint_url:
            celery.conf.update(broker_url=sqs_broker_url(settings))
    celery.steps["consumer"].add(TopologySetup)
    celery.steps["consumer"].add(PlainJsonIngest)
    return celery


def take_plain_json_queues(queues: Any, settings: Settings) -> list[str]:
    """Take the plain-JSON queues out of Celery's selection; returns those to ingest.

    ``queues`` is Celery's ``app.amqp.queues`` after ``-Q`` was applied. A plain-JSON
    queue named in ``-Q`` would otherwise be consumed as a task queue (Celery creates
    a missing queue with a direct exchange of its name, and binds it for delayed
    delivery), so it leaves Celery's selection and its queue map and
    ``PlainJsonIngest`` consumes it. A worker whose Celery selection is every task
    queue (``celery worker`` without ``-Q``) ingests both plain-JSON queues.
    """
    names = QueueNames.from_settings(settings)
    consumed = list(queues.consume_from)
    plain = [name for name in names.plain_json_queues if name in consumed]
    if not plain and set(consumed) == set(names.task_queues):
        return list(names.plain_json_queues)
    queues.deselect(plain)
    for name in plain:
        queues.pop(name, None)
    return plain


def keep_retrain_apart(queues: Any, settings: Settings) -> bool:
    """Deselect the retrain queue from a worker that consumes other queues too.

    ``queues`` is Celery's ``app.amqp.queues`` after ``-Q`` was applied; returns
    True when the retrain queue was taken out.
    """
    retrain = QueueNames.from_settings(settings).retrain
    consumed = set(queues.consume_from)
    if retrain not in consumed or consumed == {retrain}:
        return False
    queues.deselect([retrain])
    return True


@signals.celeryd_after_setup.connect(weak=False)
def select_queues(instance: Any, **_: Any) -> None:
    """Consume exactly what ``-Q`` named: plain-JSON queues to the ingest, the retrain
    queue only alone; register the retrain task only where it is consumed."""
    settings = get_settings()
    queues = instance.app.amqp.queues
    instance.app.conf[PLAIN_JSON_SELECTION] = take_plain_json_queues(queues, settings)
    retrain = QueueNames.from_settings(settings).retrain
    if keep_retrain_apart(queues, settings):
        log.warning(
            "retrain_queue_skipped",
            reason="the retrain queue is consumed only by a worker started for it alone",
            start_with=f"synthdetect worker -Q {retrain}",
        )
    elif retrain in set(queues.consume_from):
        # Imported here, before the consumer starts: a classify worker never loads training code.
        import worker.queue.retrain_tasks  # noqa: F401


@signals.setup_logging.connect(weak=False)
def _logging(**_: Any) -> None:
    """Our structlog set-up instead of Celery's (JSON lines with job_id on every line)."""
    configure_logging(get_settings())


app = create_app(get_settings())
