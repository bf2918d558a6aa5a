"""Webhook attempts against a real HTTP server that verifies signatures (``standardwebhooks``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.callbacks import CallbackReceiver, running_receiver
from worker.settings import Settings
from worker.webhooks.delivery import RetryPolicy, deliver_attempt, http_client

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
POLICY = RetryPolicy(max_attempts=5, base_s=1, max_s=10)


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with running_receiver(SECRET) as receiver:
        yield receiver


def post(url: str, attempt: int, allow: list[str] | None = None):  # type: ignore[no-untyped-def]
    with http_client(Settings(callback_timeout_s=5)) as client:
        return deliver_attempt(
            client,
            url,
            "job-7",
            b'{"job_id": "job-7"}',
            SECRET,
            attempt,
            POLICY,
            ["127.0.0.1"] if allow is None else allow,
        )


def test_fails_twice_then_delivers_with_the_same_webhook_id(receiver: CallbackReceiver) -> None:
    url = receiver.plan("/flaky", 500, 503)
    outcomes = [post(url, n).outcome for n in (1, 2, 3)]
    assert outcomes == ["retry", "retry", "delivered"]
    deliveries = receiver.for_job("job-7")
    assert [d.answered for d in deliveries] == [500, 503, 200]
    assert all(d.verified for d in deliveries)
    assert deliveries[-1].body == {"job_id": "job-7"}


def test_gone_stops(receiver: CallbackReceiver) -> None:
    assert post(receiver.plan("/gone", 410), 1).outcome == "stopped"


def test_loopback_is_refused_unless_allow_listed(receiver: CallbackReceiver) -> None:
    record = post(receiver.plan("/x"), 1, allow=[])
    assert record.outcome == "refused"
    assert receiver.deliveries == []


def test_an_unreachable_receiver_is_retried(receiver: CallbackReceiver) -> None:
    port = receiver.base_url.rsplit(":", 1)[1]
    receiver.stop()
    record = post(f"http://127.0.0.1:{port}/down", 1)
    assert record.outcome == "retry"
    assert record.error
