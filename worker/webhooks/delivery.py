"""Signed webhook callbacks: the Standard Webhooks signature, an SSRF guard, a retry policy.

One call of ``deliver_attempt`` makes one POST and says what comes next; the
schedule between attempts lives in the broker (a delayed task message), not in
a sleeping thread, so it survives worker restarts. The attempts are recorded in
``delivery.json`` next to the summary, and the attempt number comes from that
record, so a restarted or duplicated delivery continues the same count.

- ``webhook-id`` is the job id on every attempt (receivers dedupe on it);
  ``webhook-timestamp`` is the attempt's time; ``webhook-signature`` is
  ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed by a ``whsec_`` secret.
- 2xx: delivered. 410 Gone: the receiver asks us to stop. Anything else
  (3xx included: redirects are never followed), or no answer within the
  timeouts: retried with exponential backoff and jitter, or after the
  ``Retry-After`` the receiver asked for, until ``max_attempts``.
- Hosts that resolve to loopback, private, link-local (cloud metadata),
  shared or reserved addresses are refused unless allow-listed
  (``worker.webhooks.ssrf``). The check runs before every attempt, and the
  connection goes to an address the check vetted (``PinnedTransport``), so a DNS
  answer that changes between the check and the connection (rebinding) never
  reaches a private address.

The network sits behind ``httpx.Client``: tests pass ``httpx.MockTransport``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict
from standardwebhooks import Webhook

from contracts import ImageResult, JobSummary
from worker.settings import Settings
from worker.webhooks.ssrf import PINNED_ADDRESSES, PinnedTransport

# The SSRF guard lives in worker.webhooks.ssrf; its names stay importable from here.
from worker.webhooks.ssrf import CallbackRefused as CallbackRefused
from worker.webhooks.ssrf import Resolver as Resolver
from worker.webhooks.ssrf import check_callback_url as check_callback_url
from worker.webhooks.ssrf import system_resolver as system_resolver

# --- signing ---------------------------------------------------------------------------


def signed_headers(secret: str, msg_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (``now`` is its timestamp)."""
    timestamp = now.replace(microsecond=0)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body.decode()),
    }


def callback_body(summary: JobSummary, results: list[ImageResult] | None, max_bytes: int) -> bytes:
    """The summary, with per-image results inline while the body stays within ``max_bytes``."""
    if results is not None:
        body = summary.model_copy(update={"results": results}).model_dump_json(exclude_none=True)
        if len(body.encode()) <= max_bytes:
            return body.encode()
    return summary.model_copy(update={"results": None}).model_dump_json(exclude_none=True).encode()


# --- retry policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a failed attempt."""

    max_attempts: int
    base_s: float
    max_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.callback_max_attempts,
            settings.callback_backoff_base_s,
            settings.callback_backoff_max_s,
        )

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        ``Retry-After`` wins when given (capped at ``max_s``); otherwise
        ``base * 2**(attempt-1)`` capped at ``max_s``, with "equal jitter":
        a uniform draw from the upper half, so receivers recovering from an
        outage are not hit by every sender at the same instant.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_s)
        ceiling = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


# --- attempts ------------------------------------------------------------------------------


class AttemptRecord(BaseModel):
    """One POST and what came of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempt: int
    at: AwareDatetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float
    outcome: Literal["delivered", "retry", "stopped", "gave_up", "refused", "lost"]
    """``lost``: claimed by a sender that stopped before recording what came of it."""
    next_delay_s: float | None = None


class DeliveryRecord(BaseModel):
    """``delivery.json``: where the callback stands, and every attempt so far."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    url: str
    state: Literal["pending", "delivered", "stopped", "gave_up", "refused"] = "pending"
    attempts: list[AttemptRecord] = []

    @property
    def finished(self) -> bool:
        return self.state != "pending"


def deliver_attempt(
    client: httpx.Client,
    url: str,
    msg_id: str,
    body: bytes,
    secret: str,
    attempt: int,
    policy: RetryPolicy,
    allowlist: Sequence[str],
    resolve: Resolver = system_resolver,
) -> AttemptRecord:
    """Make attempt number ``attempt``; the record says whether and when to retry."""
    now = datetime.now(UTC)
    started = time.monotonic()
    status: int | None = None
    retry_after: float | None = None
    error: str | None = None
    try:
        addresses = check_callback_url(url, allowlist, resolve)
        headers = signed_headers(secret, msg_id, body, now)
        # The client's PinnedTransport connects to one of these, never to a new DNS answer
        # ([]: allow-listed by name, connect by name).
        pinned = {PINNED_ADDRESSES: addresses}
        with client.stream(
            "POST", url, content=body, headers=headers, extensions=pinned
        ) as response:
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    except CallbackRefused as exc:
        return _record(attempt, now, started, None, str(exc), "refused", None)
    except (httpx.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    if status is not None and 200 <= status < 300:
        return _record(attempt, now, started, status, None, "delivered", None)
    if status == 410:
        return _record(
            attempt, now, started, status, "410 Gone: receiver asked to stop", "stopped", None
        )
    error = error or f"HTTP {status}"
    if attempt >= policy.max_attempts:
        return _record(attempt, now, started, status, error, "gave_up", None)
    delay = policy.delay(attempt, retry_after)
    return _record(attempt, now, started, status, error, "retry", delay)


def _record(
    attempt: int,
    at: datetime,
    started: float,
    status: int | None,
    error: str | None,
    outcome: Any,
    delay: float | None,
) -> AttemptRecord:
    return AttemptRecord(
        attempt=attempt,
        at=at,
        status_code=status,
        error=error,
        duration_ms=round((time.monotonic() - started) * 1e3, 1),
        outcome=outcome,
        next_delay_s=None if delay is None else round(delay, 3),
    )


def http_client(settings: Settings, resolve: Resolver = system_resolver) -> httpx.Client:
    """The process's callback client: bounded timeouts, no redirects, no proxy from env,
    connections pinned to the addresses the SSRF guard vetted (``PinnedTransport``)."""
    return httpx.Client(
        transport=PinnedTransport(settings.callback_allowlist, resolve),
        timeout=httpx.Timeout(
            settings.callback_timeout_s, connect=settings.callback_connect_timeout_s
        ),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": "synthdetect-webhooks/1"},
    )
