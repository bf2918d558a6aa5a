"""The queue worker's work, as plain functions: accept a job, run a shard, deliver its callback.

Celery tasks (``worker.queue.tasks``) only parse their message and call these; the
broker is reached through the two ``enqueue_*`` callables of ``JobServices``,
so the whole flow runs in tests without a broker.

::

    accept_job ─► check callback secret, model, size ─► plan shards ─► job.json
        ├─ one shard: run it here (low latency for small jobs)
        └─ several: one classify_shard message each
    run_shard ─► classify ─► part + done marker ─► last one? claim ─► summary.json
        └─► deliver_callback (now, then on the retry schedule) ─► delivery.json

When storage fails (``StorageError``), a shard raises ``ShardStorageFailure`` with
what it has classified so far; the task retries it over the retry window
(``worker.queue.retrywindow``) and, once that is spent or the error is permanent,
calls ``give_up_shard`` (or ``give_up_job`` when the job's inputs could not even be
listed): the shard is recorded as finished with a ``ShardFailure`` and an error row
for every image it could not read, so the job is still finalised, once, with its
callback. An image that could not be read for a transient reason
(``storage_unavailable``) makes the whole shard retry rather than be recorded.

A job seen for the first time whose one shard runs in the accepting task (most
interactive jobs) takes a shorter road: nothing it has just written is read back
(no done-marker check, listing, job record or marker reads), and the first
callback attempt is made at once from that task with the summary and results in
memory, instead of through the callbacks queue; later attempts, if any, go through
the queue as always. That is about ten storage round trips and one broker hop
less between publish and callback (scripts/bench: ``one_image_idle_p50``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from contracts import (
    ClassifyJob,
    ClassifyShard,
    ErrorCode,
    ImageError,
    ImageResult,
    JobSummary,
    ManifestInput,
    PrefixInput,
    ShardFailure,
    ShardItem,
    TarInput,
    UriListInput,
)
from worker.classify.inputs import InputItem, iter_tar_items, object_item
from worker.classify.owed import mark_owed
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.classify.priority import PRIORITY
from worker.classify.results import (
    JSON,
    JobLayout,
    JobRecord,
    ShardDone,
    assemble_summary,
    claim_finalize,
    done_shards,
    finalize_summary,
    read_job_record,
    read_results,
    read_summary,
    write_job_record,
    write_shard_results,
)
from worker.classify.sharding import plan_shards
from worker.errors import JobRejected, ModelError, StorageError, WorkHandedBack
from worker.imaging import ImageLimits
from worker.lifecycle import SHUTDOWN
from worker.logs import get_logger
from worker.metrics import JOBS, SHARD_SECONDS, record_results, timed_stage
from worker.settings import Settings
from worker.storage import Storage
from worker.webhooks.attempts import (
    CallbackTarget,
    attempt_delivery,
    delivery_pending,
    read_delivery,
)
from worker.webhooks.delivery import DeliveryRecord, Resolver, callback_body, system_resolver

if TYPE_CHECKING:  # torch loads with the engine (on first use), not with this module
    from worker.inference.engine import InferenceEngine

log = get_logger(__name__)

_MIN_RESULT_BYTES = 64
"""No ImageResult line is shorter: jobs with more images than limit/64 are never read inline."""


class ShardStorageFailure(StorageError):
    """Storage failed while a shard ran; ``results`` holds what it had classified by then."""

    def __init__(
        self, shard: ClassifyShard, results: list[ImageResult], cause: StorageError
    ) -> None:
        super().__init__(str(cause))
        self.shard = shard
        self.results = results
        self.transient = cause.transient
        self.code = cause.code


_WRITE_MARGIN_S = 2.0
"""Time kept for writing a shard's part and marker when deciding whether it can finish."""


@dataclass
class JobServices:
    """What the job functions need from the process (tests build their own)."""

    settings: Settings
    storage: Storage
    engine: Callable[[], InferenceEngine]
    enqueue_shard: Callable[[ClassifyShard], None]
    enqueue_delivery: Callable[[str, str, float], None]
    """(job_id, output_uri, delay in seconds)"""
    client: Callable[[], httpx.Client] | None = None
    """The callback HTTP client, for first attempts made in the finishing task; None: every
    attempt goes through ``enqueue_delivery``."""


def accept_job(job: ClassifyJob, services: JobServices) -> None:
    """Check a validated job, split it, and start its shards (see ``_accept``).

    Interactive jobs run marked as such: bulk pipelines of this process pause
    for them (``worker.classify.priority``).
    """
    with PRIORITY.lane(job.priority):
        _accept(job, services)


def _accept(job: ClassifyJob, services: JobServices) -> None:
    """Check a validated job, split it, and start its shards.

    Raises ``JobRejected`` for what can never succeed (no such model, no secret
    for the callback, oversize, missing manifest or tar, the job id reused for
    a different job). Redelivered or resubmitted jobs pick up where they were:
    finished shards are not run again, a finished job only ensures its callback.
    """
    settings, storage = services.settings, services.storage
    if job.callback and settings.webhook_secret_for(job.callback.secret_ref) is None:
        raise JobRejected(f"callback secret_ref {job.callback.secret_ref!r} is not configured")
    try:
        services.engine().model_for(job.model)
    except ModelError as exc:
        raise JobRejected(f"unknown model: {exc}") from exc
    layout = JobLayout.of(job.output.uri, job.job_id)
    existing = read_job_record(storage, layout)
    if existing is not None and existing.job != job:
        raise JobRejected(f"job_id {job.job_id!r} was already used for a different job")
    if existing is not None and read_summary(storage, layout) is not None:
        log.info("job_already_finished")
        _ensure_delivery(existing, layout, services)
        return
    shards = plan_shards(job, storage, settings.shard_size, settings.max_job_images)
    accepted_at = existing.accepted_at if existing else datetime.now(UTC)
    record = JobRecord(job=job, shards=len(shards), accepted_at=accepted_at)
    write_job_record(storage, layout, record)
    done = done_shards(storage, layout) if existing else set()
    log.info("job_accepted", shards=len(shards), resumed=existing is not None)
    if len(shards) == 1:
        _run_shard(shards[0], services, fresh=record if existing is None else None)
        return
    for shard in shards:
        if shard.index not in done:
            services.enqueue_shard(shard)


def run_shard(shard: ClassifyShard, services: JobServices, fresh: JobRecord | None = None) -> None:
    """See ``_run_shard``; interactive shards run marked as interactive work."""
    with PRIORITY.lane(shard.priority):
        _run_shard(shard, services, fresh)


def _run_shard(shard: ClassifyShard, services: JobServices, fresh: JobRecord | None = None) -> None:
    """Classify one shard, write its part and marker, and finalise the job if it was last.

    A shard whose marker exists already (a redelivery after it finished) is
    not classified again. A tar slice that turns out to be malformed ends the
    shard with an error in its marker; the job then reports it. ``fresh`` is the
    record of a job this task has just recorded for the first time (so no marker
    can exist yet): its only shard then finishes the job on the short road.
    """
    settings, storage = services.settings, services.storage
    layout = JobLayout.of(shard.output.uri, shard.job_id)
    marker: ShardDone | None = None
    results: list[ImageResult] = []
    if fresh is not None or not storage.exists(layout.done(shard.index)):
        started = datetime.now(UTC)
        clock = time.monotonic()
        error = None
        try:
            for result in classify_items(
                _shard_inputs(shard, storage, settings.max_image_bytes),
                services.engine(),
                shard.model,
                ImageLimits.from_settings(settings),
                PipelineConfig.from_settings(settings, urgent=shard.priority == "interactive"),
            ):
                results.append(result)
                _hand_back_if_shutting_down(shard, len(results), clock)
        except JobRejected as exc:
            error = exc.reason
        except ShardStorageFailure:
            raise
        except StorageError as exc:  # a listing or a tar stream failed part-way
            raise ShardStorageFailure(shard, results, exc) from exc
        unread = [r for r in results if _unavailable(r)]
        if unread:
            first = unread[0].error.message if unread[0].error else ""
            cause = StorageError(f"{len(unread)} of {len(results)} images unread: {first}")
            raise ShardStorageFailure(shard, results, cause)
        with timed_stage("write"):
            try:
                marker = write_shard_results(storage, layout, shard.index, results, started, error)
            except StorageError as exc:
                raise ShardStorageFailure(shard, results, exc) from exc
        SHARD_SECONDS.labels(shard.priority).observe(time.monotonic() - clock)
        record_results(results)
        labelled = sum(1 for r in results if r.label is not None)
        log.info("shard_done", images=len(results), failed=len(results) - labelled, error=error)
    if fresh is not None and marker is not None and shard.count == 1:
        _finalize_fresh(shard, layout, services, fresh, marker, results)
    else:
        _finalize_if_last(shard, layout, services)


def _unavailable(result: ImageResult) -> bool:
    return result.error is not None and result.error.code == ErrorCode.STORAGE_UNAVAILABLE


def _hand_back_if_shutting_down(shard: ClassifyShard, done: int, clock: float) -> None:
    """During a soft shutdown, stop a shard that cannot finish within the grace that is left.

    The estimate is the time per image so far times the images left; a tar slice
    (images unknown) never counts as finishable. Nothing has been written yet, so
    handing the message back loses nothing.
    """
    if not SHUTDOWN.is_set():
        return
    estimate = None
    if shard.items is not None and done > 0:
        per_image = (time.monotonic() - clock) / max(done, 1)
        estimate = per_image * (len(shard.items) - done) + _WRITE_MARGIN_S
    if not SHUTDOWN.can_finish(estimate):
        raise WorkHandedBack(
            f"shard {shard.index} stopped after {done} images: the worker is shutting down"
        )


def give_up_shard(
    shard: ClassifyShard,
    services: JobServices,
    code: str,
    reason: str,
    results: list[ImageResult] | None = None,
    inputs: str | None = None,
) -> None:
    """Record a shard that will not be retried any more as finished, then finalise if last.

    Images it classified before it failed (``results``) keep their results; every
    other image it lists gets an error row with ``code``. A shard that does not know
    its images (a tar slice, a prefix that could not be listed) says so in its
    ``ShardFailure`` (``images_unlisted``, ``inputs``). A marker that exists already
    (the shard finished after all, or gave up before) is kept. Raises ``StorageError``
    while the results bucket cannot be written: the caller tries again later.
    """
    storage = services.storage
    layout = JobLayout.of(shard.output.uri, shard.job_id)
    if not storage.exists(layout.done(shard.index)):
        error_code = _error_code(code)
        read = [r for r in results or [] if not _unavailable(r)]
        kept = {r.uri: r for r in read}
        rows: list[ImageResult] = []
        unlisted = shard.tar_slice is not None or inputs is not None
        if shard.tar_slice is not None:  # its members are known only as far as it was read
            piece = shard.tar_slice
            inputs = inputs or f"{piece.uri} bytes [{piece.start}, {piece.end})"
            rows = read
        for item in shard.items or []:
            rows.append(
                kept.get(item.uri)
                or ImageResult(
                    uri=item.uri,
                    error=ImageError(code=error_code, message=reason),
                    true_label=item.label,
                )
            )
        failure = ShardFailure(
            index=shard.index,
            code=error_code,
            message=reason,
            images_unlisted=unlisted,
            inputs=inputs,
        )
        write_shard_results(
            storage, layout, shard.index, rows, datetime.now(UTC), f"{code}: {reason}", failure
        )
        log.warning(
            "shard_gave_up",
            code=error_code.value,
            reason=reason,
            listed=len(rows),
            unlisted=unlisted,
        )
    _finalize_if_last(shard, layout, services)


def give_up_job(
    job: ClassifyJob,
    services: JobServices,
    code: str,
    reason: str,
    failure: ShardStorageFailure | None = None,
) -> None:
    """Finalise a job whose acceptance failed for good (its inputs could not be listed or read).

    A job that was never recorded becomes a one-shard job whose shard gave up: a
    list of URIs is known from the job itself and each gets an error row; a prefix,
    manifest or tar that could not be read is named in the summary's failed shard.
    A recorded job with several shards has its shard messages queued already: they
    finish (or give up) on their own.
    """
    storage = services.storage
    layout = JobLayout.of(job.output.uri, job.job_id)
    record = read_job_record(storage, layout)
    if record is None:
        record = JobRecord(job=job, shards=1, accepted_at=datetime.now(UTC))
        write_job_record(storage, layout, record)
    if record.shards != 1:
        log.warning("job_gave_up_after_sharding", shards=record.shards, reason=reason)
        return
    if failure is not None and failure.shard.count == 1:
        give_up_shard(failure.shard, services, code, reason, failure.results)
        return
    inputs = job.inputs
    items = None
    described: str | None = None
    if isinstance(inputs, UriListInput):
        known = job.labels or {}
        items = [ShardItem(uri=uri, label=known.get(uri)) for uri in inputs.uris]
    elif isinstance(inputs, PrefixInput):
        described = f"prefix {inputs.prefix} (not listed)"
    elif isinstance(inputs, ManifestInput):
        described = f"manifest {inputs.manifest} (not read)"
    elif isinstance(inputs, TarInput):
        described = f"tar {inputs.tar} (not read)"
    shard = ClassifyShard(
        job_id=job.job_id,
        model=job.model,
        output=job.output,
        priority=job.priority,
        index=0,
        count=1,
        items=items or [],
    )
    give_up_shard(shard, services, code, reason, None, described)


def _error_code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.STORAGE_UNAVAILABLE


def _shard_inputs(shard: ClassifyShard, storage: Storage, max_bytes: int) -> Iterable[InputItem]:
    if shard.tar_slice is not None:
        piece = shard.tar_slice
        return _tar_items(storage, piece.uri, piece.start, piece.end, max_bytes)
    return [object_item(storage, item.uri, max_bytes, item.label) for item in shard.items or []]


def _tar_items(
    storage: Storage, uri: str, start: int, end: int, max_bytes: int
) -> Iterator[InputItem]:
    with storage.open_stream(uri, start, end) as stream:
        yield from iter_tar_items(stream, uri, max_bytes)


def _finalize_if_last(shard: ClassifyShard, layout: JobLayout, services: JobServices) -> None:
    storage = services.storage
    if not set(range(shard.count)) <= done_shards(storage, layout):
        return
    if not claim_finalize(storage, layout, shard.index):
        return
    record = read_job_record(storage, layout)
    if record is None:
        raise JobRejected(f"{layout.job} is missing: the job was never accepted here")
    summary = read_summary(storage, layout)
    if summary is None:
        mark_owed(storage, layout, record.job)
        summary = finalize_summary(storage, layout, record)
        JOBS.labels(summary.status, record.job.priority).inc()
        log.info(
            "job_finished",
            status=summary.status,
            images=summary.counts.total,
            images_per_s=round(summary.timings.images_per_s, 1),
        )
    _ensure_delivery(record, layout, services)


def _finalize_fresh(
    shard: ClassifyShard,
    layout: JobLayout,
    services: JobServices,
    record: JobRecord,
    marker: ShardDone,
    results: list[ImageResult],
) -> None:
    """Finish a first-seen one-shard job from memory, and make its first callback attempt.

    The claim and the summary check stay: a duplicate of this job running at the
    same time must still finalise it once.
    """
    storage = services.storage
    if not claim_finalize(storage, layout, shard.index):
        return
    summary = read_summary(storage, layout)
    if summary is None:
        mark_owed(storage, layout, record.job)
        summary = assemble_summary([marker], record, layout)
        summary_json = summary.model_dump_json(exclude_none=True).encode()
        storage.put_bytes(layout.summary, summary_json, JSON)
        JOBS.labels(summary.status, record.job.priority).inc()
        log.info(
            "job_finished",
            status=summary.status,
            images=summary.counts.total,
            images_per_s=round(summary.timings.images_per_s, 1),
        )
    if record.job.callback is None:
        return
    if services.client is None:
        _ensure_delivery(record, layout, services)
        return
    deliver(
        record.job.job_id,
        record.job.output.uri,
        services,
        services.client(),
        known=(record, summary, results),
    )


def _callback_target(record: JobRecord, layout: JobLayout) -> CallbackTarget | None:
    job = record.job
    if job.callback is None:
        return None
    return CallbackTarget(
        job.job_id, job.callback, layout.delivery, layout.delivery_claims, layout.pending
    )


def _ensure_delivery(record: JobRecord, layout: JobLayout, services: JobServices) -> None:
    target = _callback_target(record, layout)
    if target is not None and delivery_pending(services.storage, target):
        services.enqueue_delivery(record.job.job_id, record.job.output.uri, 0.0)


def read_delivery_record(storage: Storage, output_uri: str, job_id: str) -> DeliveryRecord | None:
    """A job's ``delivery.json`` (every callback attempt so far), or None before the first."""
    return read_delivery(storage, JobLayout.of(output_uri, job_id).delivery)


def deliver(
    job_id: str,
    output_uri: str,
    services: JobServices,
    client: httpx.Client,
    resolve: Resolver = system_resolver,
    known: tuple[JobRecord, JobSummary, list[ImageResult]] | None = None,
) -> DeliveryRecord | None:
    """Make the next callback attempt of a finished job and schedule the one after, if any.

    ``known`` is the job's record, summary and results when the caller has them in
    memory (the short road); otherwise they are read. Returns the updated record,
    or None when there is nothing to deliver.
    """
    settings, storage = services.settings, services.storage
    layout = JobLayout.of(output_uri, job_id)
    if known is None:
        record, summary = read_job_record(storage, layout), read_summary(storage, layout)
    else:
        record, summary = known[0], known[1]
    target = None if record is None else _callback_target(record, layout)
    if record is None or summary is None or target is None:
        log.warning("nothing_to_deliver", has_record=record is not None, has_summary=bool(summary))
        return None

    def body() -> bytes:
        inline_limit = settings.callback_inline_max_bytes
        small = summary.counts.total * _MIN_RESULT_BYTES <= inline_limit
        if known is not None:
            results: list[ImageResult] | None = known[2] if small else None
        else:
            results = read_results(storage, layout, record.shards) if small else None
        return callback_body(summary, results, inline_limit)

    return attempt_delivery(
        target,
        body,
        settings,
        storage,
        client,
        lambda delay_s: services.enqueue_delivery(job_id, output_uri, delay_s),
        resolve,
    )
