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

One sender at a time: before attempt *n* is made, its sender claims it with a
conditional write (``If-None-Match: *`` on ``delivery/attempt-0000n.claim``, the
mechanism that claims finalisation). Two workers racing on one job (a duplicate
message, a redelivery, the sweeper) both read "n attempts so far"; one wins the
claim and posts, the other sends nothing. A claim older than ``claim_lease_s``
whose attempt was never recorded belongs to a sender that died mid-attempt: the
next sender records it as ``lost`` and claims *n + 1*.

While a callback is owed, a marker (``CallbackTarget.pending_uri``) stays in the
results bucket; it is removed once delivery has finished (delivered, stopped,
given up or refused), so ``worker.classify.owed`` can find what was never sent.

Signing, the SSRF guard and the retry policy live in ``worker.webhooks.delivery``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from contracts import Callback
from worker.errors import JobRejected, ObjectNotFound, StorageError
from worker.logs import get_logger
from worker.metrics import CALLBACK_ATTEMPTS, STAGE_SECONDS
from worker.settings import Settings
from worker.storage import Storage
from worker.webhooks.delivery import (
    AttemptRecord,
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
    claims_prefix: str
    """Where attempt claims go: ``<claims_prefix>attempt-0000n.claim``."""
    pending_uri: str | None = None
    """The owed-callback marker to remove once delivery has finished."""

    def claim_uri(self, attempt: int) -> str:
        return f"{self.claims_prefix}attempt-{attempt:05d}.claim"


def claim_lease_s(settings: Settings) -> float:
    """How long an unrecorded attempt claim may be held before others count it lost:
    the longest a POST may take, plus a minute for the record's write."""
    return settings.callback_connect_timeout_s + settings.callback_timeout_s + 60.0


_SENDER = f"{socket.gethostname()}:{os.getpid()}"


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
    """Make the next attempt unless delivery has finished or another sender holds it.

    Returns the delivery record as this call left it (unchanged when another
    sender holds the attempt). ``body`` is called only while delivery is pending.
    Raises ``JobRejected`` when the callback's signing secret is not configured
    on this worker.
    """
    delivery = read_delivery(storage, target.record_uri) or DeliveryRecord(
        job_id=target.job_id, url=str(target.callback.url)
    )
    if delivery.finished:
        _clear_pending(storage, target)
        return delivery
    secret = settings.webhook_secret_for(target.callback.secret_ref)
    if secret is None:
        raise JobRejected(f"callback secret_ref {target.callback.secret_ref!r} is not configured")
    content = body()  # before the claim: a failed read must not hold the attempt
    number = claim_attempt(storage, target, delivery, claim_lease_s(settings))
    if number is None:
        log.info("callback_attempt_held_elsewhere", attempt=len(delivery.attempts) + 1)
        return delivery
    attempt = deliver_attempt(
        client,
        str(target.callback.url),
        target.job_id,
        content,
        secret.get_secret_value(),
        number,
        RetryPolicy.from_settings(settings),
        settings.callback_allowlist,
        resolve,
    )
    delivery.attempts.append(attempt)
    outcome = attempt.outcome
    delivery.state = "pending" if outcome == "retry" or outcome == "lost" else outcome
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
    if delivery.state != "pending":
        _clear_pending(storage, target)
    elif attempt.next_delay_s is not None:
        schedule_retry(attempt.next_delay_s)
    return delivery


def claim_attempt(
    storage: Storage, target: CallbackTarget, delivery: DeliveryRecord, lease_s: float
) -> int | None:
    """Claim the next attempt number for this sender; None when another sender holds it.

    Stale claims (older than ``lease_s``, their attempt never recorded) are added to
    ``delivery`` as ``lost`` attempts and skipped.
    """
    number = len(delivery.attempts) + 1
    while True:
        token = json.dumps(
            {"sender": _SENDER, "token": secrets.token_hex(8), "at": time.time()}
        ).encode()
        if storage.put_if_absent(target.claim_uri(number), token, JSON):
            return number
        claimed_at = _claimed_at(storage, target.claim_uri(number))
        if claimed_at is None or time.time() - claimed_at < lease_s:
            return None
        delivery.attempts.append(
            AttemptRecord(
                attempt=number,
                at=datetime.fromtimestamp(claimed_at, UTC),
                error="its sender stopped before recording the attempt",
                duration_ms=0.0,
                outcome="lost",
            )
        )
        log.warning("callback_attempt_lost", attempt=number)
        number += 1


def _claimed_at(storage: Storage, uri: str) -> float | None:
    try:
        value = json.loads(storage.get_bytes(uri)).get("at")
    except ObjectNotFound:
        return None  # removed since: let the next message decide
    except (ValueError, AttributeError):
        return 0.0  # unreadable: treat as stale
    return float(value) if isinstance(value, (int, float)) else 0.0


def _clear_pending(storage: Storage, target: CallbackTarget) -> None:
    """Remove the owed marker; a failure is harmless (the sweeper finds it finished)."""
    if target.pending_uri is None:
        return
    try:
        storage.delete(target.pending_uri)
    except StorageError as exc:
        log.warning("pending_marker_not_removed", error=str(exc))
