"""Celery tasks of a classify worker: parse the message, call ``worker.classify.runner``.

Every task shares one ``_Runtime`` per process: settings, storage, the
inference engine (created on first use, so CUDA starts in the process that
scores, never before a fork) and the callback HTTP client. Cross-cutting
behaviour sits in ``JobTask`` and ``on_storage_failure``:

- transient storage errors are retried over ``storage_retry_window_s`` from the
  first failure (``worker.queue.retrywindow``; the state travels in the message's
  ``retry`` kwarg, the delay is kept by the broker); when the window is spent, or
  at once for a permanent error, the shard or job *gives up*: it is recorded as
  finished with its failure, and the job is finalised and called back;
- every publish (shards, retries, callback attempts) is retried for
  ``broker_publish_retry_s`` across a broker outage;
- on SIGTERM a shard that cannot finish within ``shutdown_grace_s`` is handed
  back (RabbitMQ: reject with requeue; SQS: the same message sent again, the
  original acknowledged), so nothing waits for a visibility timeout;
- a task that fails for good is dead-lettered with its reason.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from celery import Task, signals
from celery.exceptions import Reject

from contracts import ClassifyShard
from worker.classify import owed
from worker.classify import runner as jobs
from worker.classify.priority import PRIORITY
from worker.errors import JobRejected, StorageError, WorkHandedBack
from worker.lifecycle import SHUTDOWN
from worker.logs import get_logger
from worker.metrics import record_batch
from worker.queue import probes, queuewait  # noqa: F401 - queuewait hooks Celery's signals
from worker.queue.app import app
from worker.queue.deadletter import DeadLetterSink, dead_letter, dead_letter_sink
from worker.queue.ingest import PLAIN_JSON_SELECTION, validate_job
from worker.queue.retrywindow import GiveUp, RetryState, RetryWindow
from worker.queue.topology import TASK_ACCEPT, TASK_DELIVER, TASK_SHARD, QueueNames
from worker.retrain import records as retrain_records
from worker.settings import Settings, get_settings
from worker.storage import Storage
from worker.webhooks.delivery import http_client

if TYPE_CHECKING:  # torch loads with the engine, after the worker is ready
    from worker.inference.engine import InferenceEngine

log = get_logger(__name__)

SQS_MAX_DELAY_S = 900

_PUBLISH_INTERVAL_MAX_S = 5.0


def publish_retry_policy(seconds: float) -> dict[str, float]:
    """kombu's retry policy for a publish that keeps trying for about ``seconds``:
    waits of 0, 1, 2, ... up to 5 s between tries."""
    total, tries = 0.0, 0
    while total < seconds:
        total += min(float(tries), _PUBLISH_INTERVAL_MAX_S)
        tries += 1
    return {
        "max_retries": max(tries, 1),
        "interval_start": 0,
        "interval_step": 1,
        "interval_max": _PUBLISH_INTERVAL_MAX_S,
    }


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
        self.window = RetryWindow.from_settings(settings)
        self.publish_policy = publish_retry_policy(settings.broker_publish_retry_s)

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
            retry=True,
            retry_policy=self.publish_policy,
        )

    def delay_options(self, delay_s: float) -> dict[str, Any]:
        """How a message is held back ``delay_s`` seconds by the broker.

        RabbitMQ: Celery's native delayed delivery (quorum queues). SQS: the
        message's DelaySeconds (at most 900 s; longer delays fall back to an ETA
        the worker holds, which the visibility timeout must outlast).
        """
        if delay_s <= 0:
            return {}
        seconds = max(1, math.ceil(delay_s))
        if self.settings.broker_kind == "sqs" and seconds <= SQS_MAX_DELAY_S:
            return {"delay_seconds": seconds}
        return {"countdown": seconds}

    def republish(
        self, task: str, args: list[Any], kwargs: dict[str, Any], delay_s: float = 0.0
    ) -> None:
        """Send a task message again (a retry after a delay, or a hand-back)."""
        app.send_task(
            task,
            args=args,
            kwargs=kwargs,
            retry=True,
            retry_policy=self.publish_policy,
            **self.delay_options(delay_s),
        )

    def enqueue_delivery(
        self, job_id: str, location: str, delay_s: float, kind: str = "classify"
    ) -> None:
        """Queue a callback attempt; a delay is kept by the broker, not by a worker thread.

        ``location`` is where the job's records are: a classify job's output URI,
        a retrain job's jobs root (so any worker can deliver, whatever its registry).
        The publish is retried across a broker outage (``broker_publish_retry_s``);
        if it still fails, the owed-callback marker lets the sweeper send it later.
        """
        options: dict[str, Any] = {"queue": self.names.callbacks, **self.delay_options(delay_s)}
        if kind != "classify":
            options["kwargs"] = {"kind": kind}
        app.send_task(
            TASK_DELIVER,
            args=[job_id, location],
            retry=True,
            retry_policy=self.publish_policy,
            **options,
        )

    def sweep_owed_callbacks(self) -> int:
        """Queue every owed callback in the results buckets (see ``worker.classify.owed``)."""
        buckets = self.settings.callback_sweep_buckets or self.storage.s3_buckets()
        return owed.sweep(
            self.storage,
            owed.sweep_roots(buckets),
            self.enqueue_delivery,
            grace_s=self.settings.callback_sweep_interval_s,
        )

    def close(self) -> None:
        """Release the engine and the HTTP client. Runs after every task has ended (finished
        or handed back), so images still queued in the batcher belong to no one: dropped."""
        if self._engine is not None:
            self._engine.close(discard_queued=True)
        if self._client is not None:
            self._client.close()


runtime = _Runtime(get_settings())
probes.install(app)


class JobTask(Task[..., None]):
    """Dead-letters whatever fails for good (storage retries: ``on_storage_failure``)."""

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


def on_storage_failure(
    task: str,
    exc: StorageError,
    state: RetryState | None,
    args: list[Any],
    give_up: Callable[[RetryState], None] | None,
) -> None:
    """Retry a task whose storage failed, within the window; then give up (or raise).

    ``give_up`` records the failure for the job; None: the task has nothing to
    record (a callback attempt: its owed marker stays, and the sweeper retries)
    and the error is raised (dead-letter).
    """
    decision = runtime.window.after_failure(state, time.time(), exc.transient, str(exc), exc.code)
    if isinstance(decision, GiveUp):
        log.warning(
            "storage_gave_up",
            code=exc.code,
            transient=exc.transient,
            error=str(exc),
            retries=decision.state.retries,
            window_s=runtime.window.window_s,
        )
        if give_up is None:
            raise exc
        _give_up(task, decision.state, args, give_up)
        return
    log.warning(
        "storage_retry",
        error=str(exc),
        retry=decision.state.retries,
        delay_s=round(decision.delay_s, 1),
        failing_for_s=round(time.time() - decision.state.first_failure_at, 1),
    )
    runtime.republish(task, args, {"retry": decision.state.to_message()}, decision.delay_s)


def _give_up(
    task: str, state: RetryState, args: list[Any], give_up: Callable[[RetryState], None]
) -> None:
    """Record the failure; while the results bucket cannot take it, try again later."""
    try:
        give_up(state)
    except StorageError as exc:
        again = runtime.window.after_failed_give_up(state, time.time()) if exc.transient else None
        if again is None:
            raise
        log.warning("give_up_not_recorded", error=str(exc), delay_s=again.delay_s)
        runtime.republish(task, args, {"retry": again.state.to_message()}, again.delay_s)


def _hand_back(task: str, args: list[Any], kwargs: dict[str, Any], reason: str) -> None:
    """Give a message that this worker will not finish back to the queue, now.

    RabbitMQ: reject with requeue (the message keeps its place and delivery count).
    SQS: the same message is sent again and the original acknowledged, which
    frees it at once instead of after the visibility timeout.
    """
    log.info("work_handed_back", reason=reason, grace_left_s=SHUTDOWN.remaining_s())
    if runtime.settings.broker_kind == "amqp":
        raise Reject(reason, requeue=True)
    runtime.republish(task, args, kwargs)


def _job_id_from_args(args: Any) -> str | None:
    first = args[0] if args else None
    if isinstance(first, dict):
        value = first.get("job_id")
        return value if isinstance(value, str) else None
    return first if isinstance(first, str) else None


def _within_storage_window(
    task: str,
    message: dict[str, Any],
    retry: dict[str, Any] | None,
    work: Callable[[], None],
    give_up: Callable[[RetryState, StorageError | None], None],
) -> None:
    """Run a job task's ``work`` under the storage retry window.

    Both job tasks have the same three ways out besides success: the window is spent
    (``give_up`` records it for the job, no new attempt), a soft shutdown stops the
    work (the message goes back untouched), or storage fails (retried within the
    window, then given up). ``give_up`` gets the failure when there is one.
    """
    state = RetryState.from_message(retry)
    if state is not None and state.giving_up:
        _give_up(task, state, [message], lambda s: give_up(s, None))
        return
    try:
        work()
    except WorkHandedBack as exc:
        _hand_back(task, [message], {"retry": retry} if retry else {}, str(exc))
    except StorageError as exc:
        failure = exc  # ``exc`` itself is unbound once the except block ends
        on_storage_failure(task, failure, state, [message], lambda s: give_up(s, failure))


@app.task(name=TASK_ACCEPT, base=JobTask)
def accept_job(job: dict[str, Any], retry: dict[str, Any] | None = None) -> None:
    """A ClassifyJob from any producer (the Python client, or ``PlainJsonIngest``)."""
    parsed = validate_job(job)
    with structlog.contextvars.bound_contextvars(job_id=parsed.job_id):
        services = runtime.services()

        def give_up(state: RetryState, exc: StorageError | None) -> None:
            failure = exc if isinstance(exc, jobs.ShardStorageFailure) else None
            jobs.give_up_job(parsed, services, state.code, state.reason, failure)

        _within_storage_window(
            TASK_ACCEPT, job, retry, lambda: jobs.accept_job(parsed, services), give_up
        )


@app.task(name=TASK_SHARD, base=JobTask)
def classify_shard(shard: dict[str, Any], retry: dict[str, Any] | None = None) -> None:
    """One shard of a split job."""
    parsed = ClassifyShard.from_json_value(shard)
    with structlog.contextvars.bound_contextvars(job_id=parsed.job_id, shard=parsed.index):
        services = runtime.services()

        def give_up(state: RetryState, exc: StorageError | None) -> None:
            results = exc.results if isinstance(exc, jobs.ShardStorageFailure) else None
            jobs.give_up_shard(parsed, services, state.code, state.reason, results)

        _within_storage_window(
            TASK_SHARD, shard, retry, lambda: jobs.run_shard(parsed, services), give_up
        )


@app.task(name=TASK_DELIVER, base=JobTask)
def deliver_callback(
    job_id: str, location: str, kind: str = "classify", retry: dict[str, Any] | None = None
) -> None:
    """One webhook attempt for a finished classify (or retrain) job."""
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        try:
            if kind == "retrain":
                retrain_records.deliver(
                    job_id, location, runtime.retrain_services(), runtime.client()
                )
            elif kind == "classify":
                jobs.deliver(job_id, location, runtime.services(), runtime.client())
            else:
                raise JobRejected(f"unknown callback kind {kind!r}")
        except StorageError as exc:
            on_storage_failure(
                TASK_DELIVER, exc, RetryState.from_message(retry), [job_id, location, kind], None
            )


@signals.worker_ready.connect(weak=False)
def _on_ready(sender: Any = None, **_: Any) -> None:
    # Celery's task queues and the plain-JSON queues the ingest reads: all this worker consumes.
    queues = sorted([*app.amqp.queues.consume_from, *app.conf.get(PLAIN_JSON_SELECTION, ())])
    probes.start(runtime.settings, runtime.engine, queues, runtime.names.retrain)
    if set(queues) != {runtime.names.retrain}:
        start_sweeper()
    # What this worker really consumes and runs (-Q and -c override the settings).
    controller = getattr(sender, "controller", None)
    log.info(
        "worker_ready",
        broker=runtime.settings.broker_kind,
        queues=queues,
        concurrency=getattr(controller, "concurrency", runtime.settings.worker_concurrency),
    )


@signals.worker_shutting_down.connect(weak=False)
def _on_shutting_down(**_: Any) -> None:
    """SIGTERM (or any warm shutdown): running shards now finish within the grace or hand
    their message back; readiness fails; the sweeper stops."""
    SHUTDOWN.begin(runtime.settings.shutdown_grace_s)
    log.info("worker_shutting_down", grace_s=runtime.settings.shutdown_grace_s)


@signals.worker_shutdown.connect(weak=False)
def _on_shutdown(**_: Any) -> None:
    runtime.close()


def _sweep_owed_callbacks() -> None:
    """At start and every ``callback_sweep_interval_s``, queue what callbacks are owed."""
    interval = runtime.settings.callback_sweep_interval_s
    while not SHUTDOWN.is_set():
        try:
            queued = runtime.sweep_owed_callbacks()
            if queued:
                log.info("owed_callbacks_queued", count=queued)
        except StorageError as exc:  # e.g. no s3:ListAllMyBuckets permission
            log.warning(
                "sweep_failed",
                error=str(exc),
                hint="list the results buckets in SYNTHDETECT_CALLBACK_SWEEP_BUCKETS",
            )
        except Exception:
            log.exception("sweep_failed")
        if SHUTDOWN.sleep(interval):
            return


def start_sweeper() -> threading.Thread | None:
    """The sweeper thread (None when ``callback_sweep_interval_s`` is 0)."""
    if runtime.settings.callback_sweep_interval_s <= 0:
        return None
    thread = threading.Thread(target=_sweep_owed_callbacks, name="owed-callbacks", daemon=True)
    thread.start()
    return thread
