"""Where a retrain job's records live, and its callback: what any worker may need of a retrain.

Kept apart from ``worker.retrain.jobs`` so that delivering a retrain job's
callback (any worker consuming the callbacks queue does it) and waiting for its
summary (producers) never import the training code.

What a job leaves sits in the registry, next to the versions it publishes::

    <registry>/<name>/jobs/<job_id>/job.json        the job as accepted
    <registry>/<name>/jobs/<job_id>/summary.json    the RetrainSummary
    <registry>/<name>/jobs/<job_id>/delivery.json   callback attempts
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from pydantic import BaseModel

from contracts import RetrainJob, RetrainSummary
from worker.classify.results import RecordLayout
from worker.errors import ObjectNotFound
from worker.logs import get_logger
from worker.settings import Settings
from worker.storage import Storage, join_uri
from worker.webhooks.attempts import CallbackTarget, attempt_delivery
from worker.webhooks.delivery import DeliveryRecord, Resolver, system_resolver

log = get_logger(__name__)

_Record = TypeVar("_Record", bound=BaseModel)


@dataclass
class RetrainServices:
    """What the retrain functions need from the process (tests build their own)."""

    settings: Settings
    storage: Storage
    enqueue_delivery: Callable[[str, str, float], None]
    """(job_id, jobs root, delay in seconds): queue a callback attempt of a retrain job."""


RetrainLayout = RecordLayout
"""A retrain job's records: ``<registry>/<model>/jobs/<job_id>/...``."""


def jobs_root(registry_root: str, model: str) -> str:
    """Where the retrain jobs of ``model`` keep their records: ``<registry>/<model>/jobs``."""
    return join_uri(registry_root, model, "jobs")


def deliver(
    job_id: str,
    jobs_root: str,
    services: RetrainServices,
    client: httpx.Client,
    resolve: Resolver = system_resolver,
) -> DeliveryRecord | None:
    """Make the next callback attempt of a finished retrain job; None if nothing to deliver."""
    storage = services.storage
    layout = RetrainLayout.of(jobs_root, job_id)
    job = read_record(storage, layout.job, RetrainJob)
    summary = read_record(storage, layout.summary, RetrainSummary)
    if job is None or summary is None or job.callback is None:
        log.warning("nothing_to_deliver", has_record=job is not None, has_summary=bool(summary))
        return None
    return attempt_delivery(
        CallbackTarget(job_id, job.callback, layout.delivery, layout.delivery_claims),
        lambda: summary.model_dump_json(exclude_none=True).encode(),
        services.settings,
        storage,
        client,
        lambda delay_s: services.enqueue_delivery(job_id, jobs_root, delay_s),
        resolve,
    )


def read_record(storage: Storage, uri: str, model: type[_Record]) -> _Record | None:
    try:
        return model.model_validate_json(storage.get_bytes(uri))
    except ObjectNotFound:
        return None
