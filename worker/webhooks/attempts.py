"""A finished job's webhook, one attempt per call, with its state kept next to the summary.

Classify and retrain jobs deliver the same way; they differ only in where their
summary lives and what the body holds. A ``CallbackTarget`` names the receiver
and the ``delivery.json`` that records every attempt, so the attempt number, the
finished state and the retry schedule survive worker restarts and duplicates:

- ``delivery_pending`` says whether a callback still needs an attempt (a
  redelivered job uses it to make sure of its callback without sending twice);
- ``attempt_delivery`` makes the next attempt, records it, and hands the delay
  of the one after to ``schedule_retry`` (a delayed broker message, never a
  sleeping thread).

Signing, the SSRF guard and the retry policy live in ``worker.webhooks.delivery``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from contracts import Callback
from worker.errors import JobRejected, ObjectNotFound
from worker.logs import get_logger
from worker.metrics import CALLBACK_ATTEMPTS, STAGE_SECONDS
from worker.settings import Settings
from worker.storage import Storage
from worker.webhooks.delivery import (
    DeliveryRecord,
    Resolver,
    RetryPolicy,
    deliver_attempt,
    system_resolver,
)

log = get_logger(__name__)

JSON = "application/json"


@dataclass(frozen=True)
class CallbackTarget:
    """Who receives a job's summary, and where the attempts are recorded."""

    job_id: str
    callback: Callback
    record_uri: str
    """The job's ``delivery.json``."""


def read_delivery(storage: Storage, record_uri: str) -> DeliveryRecord | None:
    """The attempts so far, or None before the first one."""
    try:
        return DeliveryRecord.model_validate_json(storage.get_bytes(record_uri))
    except ObjectNotFound:
        return None


def delivery_pending(storage: Storage, target: CallbackTarget) -> bool:
    """True until the callback was delivered, stopped, given up or refused."""
    record = read_delivery(storage, target.record_uri)
    return record is None or not record.finished


def attempt_delivery(
    target: CallbackTarget,
    body: Callable[[], bytes],
    settings: Settings,
    storage: Storage,
    client: httpx.Client,
    schedule_retry: Callable[[float], None],
    resolve: Resolver = system_resolver,
) -> DeliveryRecord:
    """Make the next attempt unless delivery has finished; returns the updated record.

    ``body`` is called only when an attempt is made. Raises ``JobRejected`` when
    the callback's signing secret is not configured on this worker.
    """
    delivery = read_delivery(storage, target.record_uri) or DeliveryRecord(
        job_id=target.job_id, url=str(target.callback.url)
    )
    if delivery.finished:
        return delivery
    secret = settings.webhook_secret_for(target.callback.secret_ref)
    if secret is None:
        raise JobRejected(f"callback secret_ref {target.callback.secret_ref!r} is not configured")
    attempt = deliver_attempt(
        client,
        str(target.callback.url),
        target.job_id,
        body(),
        secret.get_secret_value(),
        len(delivery.attempts) + 1,
        RetryPolicy.from_settings(settings),
        settings.callback_allowlist,
        resolve,
    )
    delivery.attempts.append(attempt)
    delivery.state = "pending" if attempt.outcome == "retry" else attempt.outcome
    storage.put_bytes(target.record_uri, delivery.model_dump_json(indent=1).encode(), JSON)
    CALLBACK_ATTEMPTS.labels(attempt.outcome).inc()
    STAGE_SECONDS.labels("callback").observe(attempt.duration_ms / 1000)
    log.info(
        "callback_attempt",
        attempt=attempt.attempt,
        outcome=attempt.outcome,
        status_code=attempt.status_code,
        error=attempt.error,
        next_delay_s=attempt.next_delay_s,
    )
    if attempt.outcome == "retry" and attempt.next_delay_s is not None:
        schedule_retry(attempt.next_delay_s)
    return delivery
