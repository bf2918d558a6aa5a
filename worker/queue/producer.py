"""Sending jobs from Python as Celery task messages: ``submit_job`` and ``submit_retrain_job``.

A contract message is valid by construction, so nothing is validated twice. A
``ClassifyJob`` goes to the queue of its priority, a ``RetrainJob`` to
``<prefix>-retrain``, over the broker in ``SYNTHDETECT_BROKER_URL``; delivery
to the broker is confirmed (RabbitMQ publisher confirms), so once a call
returns the job survives a broker restart. Producers in other languages, or
without the worker installed, publish the same JSON to ``<prefix>-jobs``
instead (docs/jobs.md). ``wait_for_summary`` and
``wait_for_retrain_summary`` poll for what the worker writes when it is done.
"""

from __future__ import annotations

import time

from celery import Celery

from contracts import ClassifyJob, JobSummary, RetrainJob, RetrainSummary
from worker.classify.results import JobLayout, read_summary
from worker.errors import ObjectNotFound
from worker.queue import queuewait  # noqa: F401 - stamps the send time (queue wait)
from worker.queue.topology import TASK_ACCEPT, TASK_RETRAIN, QueueNames
from worker.retrain.records import RetrainLayout, jobs_root
from worker.settings import Settings, get_settings
from worker.storage import Storage


def producer_app(settings: Settings) -> Celery:
    """A Celery app to send with (the worker's app, built for ``settings``)."""
    from worker.queue.app import create_app

    return create_app(settings)


def submit_job(
    job: ClassifyJob, settings: Settings | None = None, app: Celery | None = None
) -> str:
    """Send ``job`` to the worker queue of its priority; returns its ``job_id``."""
    settings = settings or get_settings()
    app = app or producer_app(settings)
    app.send_task(
        TASK_ACCEPT,
        args=[job.model_dump(mode="json", exclude_none=True)],
        queue=QueueNames.from_settings(settings).for_priority(job.priority),
        retry=True,
    )
    return job.job_id


def submit_retrain_job(
    job: RetrainJob, settings: Settings | None = None, app: Celery | None = None
) -> str:
    """Send ``job`` to the retrain queue; returns its ``job_id``."""
    settings = settings or get_settings()
    app = app or producer_app(settings)
    app.send_task(
        TASK_RETRAIN,
        args=[job.model_dump(mode="json", exclude_none=True)],
        queue=QueueNames.from_settings(settings).retrain,
        retry=True,
    )
    return job.job_id


def wait_for_summary(
    job: ClassifyJob, storage: Storage, timeout_s: float, poll_s: float = 1.0
) -> JobSummary | None:
    """Poll the results bucket until the job's summary appears (None on timeout)."""
    layout = JobLayout.of(job.output.uri, job.job_id)
    deadline = time.monotonic() + timeout_s
    while True:
        summary = read_summary(storage, layout)
        if summary is not None or time.monotonic() >= deadline:
            return summary
        time.sleep(poll_s)


def wait_for_retrain_summary(
    job: RetrainJob, registry: str, storage: Storage, timeout_s: float, poll_s: float = 2.0
) -> RetrainSummary | None:
    """Poll ``<registry>/<name>/jobs/<job_id>/summary.json`` (None on timeout)."""
    uri = RetrainLayout.of(jobs_root(registry, job.model), job.job_id).summary
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return RetrainSummary.model_validate_json(storage.get_bytes(uri))
        except ObjectNotFound:
            if time.monotonic() >= deadline:
                return None
        time.sleep(poll_s)
