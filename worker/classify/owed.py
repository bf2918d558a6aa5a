"""Owed callbacks: a durable note that a job's callback must still be sent, and its sweeper.

A finished job's callback is queued as a broker message. Between writing the
summary and that message reaching the broker there is a gap (a broker outage,
a worker killed at that moment, a publish that gave up). So the finaliser first
writes a marker, ``s3://<results bucket>/_synthdetect/pending-callbacks/<id>.json``,
then the summary, then queues the attempt; the marker is removed when delivery
finishes (``worker.webhooks.attempts``). A marker whose job has a summary and an
unfinished delivery, and whose next attempt is overdue, is owed: ``sweep`` queues
an attempt for it. The attempt claim (one sender per attempt) makes a swept
duplicate harmless: at most one HTTP request per attempt, one 2xx per job.

Workers sweep at start and every ``callback_sweep_interval_s`` (one listing per
results bucket; markers exist only while callbacks are owed, so it stays cheap).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from contracts import ClassifyJob
from worker.classify.results import JSON, PENDING_PREFIX, JobLayout, read_summary
from worker.errors import ObjectNotFound, StorageError
from worker.logs import get_logger
from worker.storage import S3_SCHEME, Storage
from worker.webhooks.attempts import read_delivery

log = get_logger(__name__)


class OwedCallback(BaseModel):
    """The marker's body: which job, where its records are, since when it is owed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    output_uri: str
    since: AwareDatetime


def mark_owed(storage: Storage, layout: JobLayout, job: ClassifyJob) -> None:
    """Note that ``job``'s callback is owed (before its summary is written); no-op without one."""
    if job.callback is None:
        return
    marker = OwedCallback(job_id=job.job_id, output_uri=job.output.uri, since=datetime.now(UTC))
    storage.put_bytes(layout.pending, marker.model_dump_json().encode(), JSON)


def sweep_roots(buckets: Iterable[str]) -> list[str]:
    """The marker folders of ``buckets``."""
    return [f"{S3_SCHEME}{bucket}/{PENDING_PREFIX}" for bucket in buckets]


def sweep(
    storage: Storage,
    roots: Iterable[str],
    enqueue_delivery: Callable[[str, str, float], None],
    grace_s: float,
    now: float | None = None,
) -> int:
    """Queue an attempt for every owed callback under ``roots``; returns how many were queued.

    A callback is owed when its job has a summary, its delivery has not finished,
    and nothing has happened for ``grace_s`` past when the next attempt was due (the
    marker's time before any attempt; the last attempt's time plus its delay after).
    Markers of finished deliveries are removed. A root that cannot be listed is
    skipped (logged): the next sweep tries again.
    """
    clock = time.time() if now is None else now
    queued = 0
    for root in roots:
        try:
            infos = list(storage.list_objects(root))
        except StorageError as exc:
            log.warning("sweep_skipped", root=root, error=str(exc))
            continue
        for info in infos:
            try:
                queued += _sweep_one(storage, info.uri, enqueue_delivery, grace_s, clock)
            except StorageError as exc:
                log.warning("sweep_marker_failed", marker=info.uri, error=str(exc))
    return queued


def _sweep_one(
    storage: Storage,
    marker_uri: str,
    enqueue_delivery: Callable[[str, str, float], None],
    grace_s: float,
    now: float,
) -> int:
    try:
        marker = OwedCallback.model_validate_json(storage.get_bytes(marker_uri))
    except ObjectNotFound:
        return 0  # removed since it was listed: delivered
    except ValidationError:
        log.warning("sweep_marker_unreadable", marker=marker_uri)
        return 0
    layout = JobLayout.of(marker.output_uri, marker.job_id)
    if read_summary(storage, layout) is None:
        return 0  # the finaliser is still writing it (or its shard's message will)
    delivery = read_delivery(storage, layout.delivery)
    if delivery is not None and delivery.finished:
        storage.delete(marker_uri)
        return 0
    due = marker.since.timestamp()
    if delivery is not None and delivery.attempts:
        last = delivery.attempts[-1]
        due = last.at.timestamp() + (last.next_delay_s or 0.0)
    if now < due + grace_s:
        return 0
    enqueue_delivery(marker.job_id, marker.output_uri, 0.0)
    log.info("owed_callback_queued", owed_job_id=marker.job_id, due_s_ago=round(now - due, 1))
    return 1
