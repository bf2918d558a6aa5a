"""Celery tasks of a classify worker: parse the message, call ``worker.classify.runner``.

Every task shares one ``_Runtime`` per process: settings, storage, the
inference engine (created on first use, so CUDA starts in the process that
scores, never before a fork) and the callback HTTP client. Cross-cutting
behaviour sits in ``JobTask``: transient storage errors are retried with
backoff, and a task that fails for good is dead-lettered with its reason.
"""

from __future__ import annotations

import json
import math
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from celery import Task, signals

from contracts import ClassifyShard
from worker.classify import runner as jobs
from worker.classify.priority import PRIORITY
from worker.errors import JobRejected, StorageError
from worker.logs import get_logger
from worker.metrics import record_batch
from worker.queue import probes, queuewait  # noqa: F401 - queuewait hooks Celery's signals
from worker.queue.app import app
from worker.queue.deadletter import DeadLetterSink, dead_letter, dead_letter_sink
from worker.queue.ingest import PLAIN_JSON_SELECTION, validate_job
from worker.queue.topology import TASK_ACCEPT, TASK_DELIVER, TASK_SHARD, QueueNames
from worker.retrain import records as retrain_records
from worker.settings import Settings, get_settings
from worker.storage import Storage
from worker.webhooks.delivery import http_client

if TYPE_CHECKING:  # torch loads with the engine, after the worker is ready
    from worker.inference.engine import InferenceEngine

log = get_logger(__name__)

SQS_MAX_DELAY_S = 900


class _Runtime:
    """The process's shared objects, created once and on first use (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = QueueNames.from_settings(settings)
        self.storage = Storage.from_settings(settings)
        self._lock = threading.Lock()
        self._engine: InferenceEngine | None = None
        self._client: httpx.Client | None = None
        self._dead: DeadLetterSink | None = None

    def engine(self) -> InferenceEngine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from worker.inference.engine import InferenceEngine

                    self._engine = InferenceEngine.from_settings(
                        self.settings,
                        self.storage,
                        on_batch=record_batch,
                        yield_bulk=PRIORITY.yield_to_interactive,
                    )
        return self._engine

    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = http_client(self.settings)
            return self._client

    def dead_letters(self) -> DeadLetterSink:
        with self._lock:
            if self._dead is None:
                self._dead = dead_letter_sink(app, self.settings)
            return self._dead

    def services(self) -> jobs.JobServices:
        return jobs.JobServices(
            settings=self.settings,
            storage=self.storage,
            engine=self.engine,
            enqueue_shard=self.enqueue_shard,
            enqueue_delivery=self.enqueue_delivery,
            client=self.client,
        )

    def retrain_services(self) -> retrain_records.RetrainServices:
        return retrain_records.RetrainServices(
            settings=self.settings,
            storage=self.storage,
            enqueue_delivery=partial(self.enqueue_delivery, kind="retrain"),
        )

    def enqueue_shard(self, shard: ClassifyShard) -> None:
        app.send_task(
            TASK_SHARD,
            args=[shard.model_dump(mode="json", exclude_none=True)],
            queue=self.names.for_priority(shard.priority),
        )

    def enqueue_delivery(
        self, job_id: str, location: str, delay_s: float, kind: str = "classify"
    ) -> None:
        """Queue a callback attempt; a delay is kept by the broker, not by a worker thread.

        ``location`` is where the job's records are: a classify job's output URI,
        a retrain job's jobs root (so any worker can deliver, whatever its registry).

        RabbitMQ: Celery's native delayed delivery (quorum queues). SQS: the
        message's DelaySeconds (at most 900 s; longer delays fall back to an ETA
        the worker holds, which the visibility timeout must outlast).
        """
        options: dict[str, Any] = {"queue": self.names.callbacks}
        if delay_s > 0:
            seconds = max(1, math.ceil(delay_s))
            if self.settings.broker_kind == "sqs" and seconds <= SQS_MAX_DELAY_S:
                options["delay_seconds"] = seconds
            else:
                options["countdown"] = seconds
        if kind != "classify":
            options["kwargs"] = {"kind": kind}
        app.send_task(TASK_DELIVER, args=[job_id, location], **options)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        if self._client is not None:
            self._client.close()


runtime = _Runtime(get_settings())
probes.install(app)


class JobTask(Task[..., None]):
    """Retries transient storage failures; dead-letters whatever fails for good."""

    autoretry_for = (StorageError,)
    retry_backoff = 2
    retry_backoff_max = 120
    retry_jitter = True
    max_retries = 6

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        reason = exc.reason if isinstance(exc, JobRejected) else f"{type(exc).__name__}: {exc}"
        queue = (self.request.delivery_info or {}).get("routing_key") or self.name
        body = json.dumps({"task": self.name, "args": args, "kwargs": kwargs})
        job_id = _job_id_from_args(args)
        try:
            dead_letter(runtime.dead_letters(), body, reason, str(queue).rsplit(".", 1)[-1], job_id)
        except Exception:
            log.exception("dead_letter_failed", reason=reason, job_id=job_id)


def _job_id_from_args(args: Any) -> str | None:
    first = args[0] if args else None
    if isinstance(first, dict):
        value = first.get("job_id")
        return value if isinstance(value, str) else None
    return first if isinstance(first, str) else None


@app.task(name=TASK_ACCEPT, base=JobTask)
def accept_job(job: dict[str, Any]) -> None:
    """A ClassifyJob from any producer (the Python client, or ``PlainJsonIngest``)."""
    parsed = validate_job(job)
    with structlog.contextvars.bound_contextvars(job_id=parsed.job_id):
        jobs.accept_job(parsed, runtime.services())


@app.task(name=TASK_SHARD, base=JobTask)
def classify_shard(shard: dict[str, Any]) -> None:
    """One shard of a split job."""
    parsed = ClassifyShard.from_json_value(shard)
    with structlog.contextvars.bound_contextvars(job_id=parsed.job_id, shard=parsed.index):
        jobs.run_shard(parsed, runtime.services())


@app.task(name=TASK_DELIVER, base=JobTask)
def deliver_callback(job_id: str, location: str, kind: str = "classify") -> None:
    """One webhook attempt for a finished classify (or retrain) job."""
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        if kind == "retrain":
            retrain_records.deliver(job_id, location, runtime.retrain_services(), runtime.client())
        elif kind == "classify":
            jobs.deliver(job_id, location, runtime.services(), runtime.client())
        else:
            raise JobRejected(f"unknown callback kind {kind!r}")


@signals.worker_ready.connect(weak=False)
def _on_ready(sender: Any = None, **_: Any) -> None:
    # Celery's task queues and the plain-JSON queues the ingest reads: all this worker consumes.
    queues = sorted([*app.amqp.queues.consume_from, *app.conf.get(PLAIN_JSON_SELECTION, ())])
    probes.start(runtime.settings, runtime.engine, queues, runtime.names.retrain)
    # What this worker really consumes and runs (-Q and -c override the settings).
    controller = getattr(sender, "controller", None)
    log.info(
        "worker_ready",
        broker=runtime.settings.broker_kind,
        queues=queues,
        concurrency=getattr(controller, "concurrency", runtime.settings.worker_concurrency),
    )


@signals.worker_shutdown.connect(weak=False)
def _on_shutdown(**_: Any) -> None:
    runtime.close()
