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

from contracts import ClassifyJob, ClassifyShard, ImageResult, JobSummary
from worker.classify.inputs import InputItem, iter_tar_items, object_item
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
from worker.errors import JobRejected, ModelError
from worker.imaging import ImageLimits
from worker.logs import get_logger
from worker.metrics import JOBS, SHARD_SECONDS, record_results, timed_stage
from worker.settings import Settings
from worker.storage import Storage
from worker.webhooks.attempts import CallbackTarget, attempt_delivery, delivery_pending
from worker.webhooks.delivery import DeliveryRecord, Resolver, callback_body, system_resolver

if TYPE_CHECKING:  # torch loads with the engine (on first use), not with this module
    from worker.inference.engine import InferenceEngine

log = get_logger(__name__)

_MIN_RESULT_BYTES = 64
"""No ImageResult line is shorter: jobs with more images than limit/64 are never read inline."""


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
        except JobRejected as exc:
            error = exc.reason
        with timed_stage("write"):
            marker = write_shard_results(storage, layout, shard.index, results, started, error)
        SHARD_SECONDS.labels(shard.priority).observe(time.monotonic() - clock)
        record_results(results)
        labelled = sum(1 for r in results if r.label is not None)
        log.info("shard_done", images=len(results), failed=len(results) - labelled, error=error)
    if fresh is not None and marker is not None and shard.count == 1:
        _finalize_fresh(shard, layout, services, fresh, marker, results)
    else:
        _finalize_if_last(shard, layout, services)


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
    return CallbackTarget(job.job_id, job.callback, layout.delivery)


def _ensure_delivery(record: JobRecord, layout: JobLayout, services: JobServices) -> None:
    target = _callback_target(record, layout)
    if target is not None and delivery_pending(services.storage, target):
        services.enqueue_delivery(record.job.job_id, record.job.output.uri, 0.0)


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
