"""Webhook delivery logic: signing, the SSRF guard, the retry policy, one attempt's outcome."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from standardwebhooks import Webhook

from contracts import Counts, ImageResult, JobSummary, ModelId, Timings
from worker.webhooks.delivery import (
    CallbackRefused,
    RetryPolicy,
    callback_body,
    check_callback_url,
    deliver_attempt,
    parse_retry_after,
    signed_headers,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
POLICY = RetryPolicy(max_attempts=4, base_s=2.0, max_s=30.0)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """A fake DNS: host -> addresses; unknown hosts fail like a real resolver."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"cannot resolve {host}")
        return table[host]

    return resolve


PUBLIC = resolver({"hooks.example.com": ["93.184.216.34"]})


def summary(total: int = 2) -> JobSummary:
    return JobSummary(
        job_id="job-1",
        status="succeeded",
        models=[ModelId(name="default", version="1")],
        counts=Counts(total=total, by_label={"real": total}),
        timings=Timings(started_at=NOW, finished_at=NOW, duration_s=0, images_per_s=0),
        shards=1,
        parts=["s3://out/job-1/parts/part-00000.jsonl"],
    )


def result(i: int) -> ImageResult:
    return ImageResult(
        uri=f"s3://in/{i:04d}.jpg",
        label="real",
        confidence=0.9,
        scores={"real": 0.9, "synthetic": 0.1},
        model=ModelId(name="default", version="1"),
    )


# --- signing -------------------------------------------------------------------------


def test_signed_headers_verify_with_the_standard_webhooks_library() -> None:
    body = b'{"job_id": "job-1"}'
    headers = signed_headers(SECRET, "job-1", body, datetime.now(UTC))
    assert headers["webhook-id"] == "job-1"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == {"job_id": "job-1"}


def test_a_tampered_body_fails_verification() -> None:
    headers = signed_headers(SECRET, "job-1", b'{"a": 1}', datetime.now(UTC))
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(SECRET).verify(b'{"a": 2}', headers)


def test_callback_body_inlines_results_only_while_small() -> None:
    small = json.loads(callback_body(summary(), [result(0), result(1)], 20_000))
    assert [r["uri"] for r in small["results"]] == ["s3://in/0000.jpg", "s3://in/0001.jpg"]
    many = [result(i) for i in range(200)]
    body = callback_body(summary(200), many, 20_000)
    assert len(body) <= 20_000
    assert "results" not in json.loads(body)
    assert json.loads(body)["counts"]["total"] == 200


# --- SSRF guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.5",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.100.100.200",  # shared address space (Alibaba metadata)
        "0.0.0.0",
        "::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "::ffff:127.0.0.1",  # loopback dressed as IPv6
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(CallbackRefused, match="non-public"):
        check_callback_url("https://evil.example/hook", [], resolver({"evil.example": [address]}))


def test_one_private_address_among_public_ones_is_refused() -> None:
    table = {"mixed.example": ["93.184.216.34", "10.0.0.1"]}
    with pytest.raises(CallbackRefused):
        check_callback_url("https://mixed.example/", [], resolver(table))


def test_public_hosts_pass() -> None:
    check_callback_url("https://hooks.example.com/x", [], PUBLIC)


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", "localhost"])
def test_allow_list_by_address_range_or_name(entry: str) -> None:
    check_callback_url("http://localhost:8080/h", [entry], resolver({"localhost": ["127.0.0.1"]}))


def test_allow_list_does_not_open_other_private_addresses() -> None:
    with pytest.raises(CallbackRefused):
        check_callback_url("http://10.0.0.7/h", ["127.0.0.1"], resolver({"10.0.0.7": ["10.0.0.7"]}))


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "file:///etc/passwd", "http:///x"])
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(CallbackRefused, match="http"):
        check_callback_url(url, [], PUBLIC)


# --- retry policy ------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_in_the_upper_half_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (9, 30.0)]:
        delays = [POLICY.delay(attempt, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_retry_after_wins_and_is_capped() -> None:
    assert POLICY.delay(1, retry_after=12) == 12
    assert POLICY.delay(1, retry_after=3600) == 30


def test_parse_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after(format_datetime(NOW + timedelta(seconds=90), usegmt=True), NOW) == 90
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


# --- one attempt -------------------------------------------------------------------------------


def client_answering(*responses: httpx.Response) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx.Client(transport=httpx.MockTransport(handle), follow_redirects=False), seen


def attempt(client: httpx.Client, n: int = 1, resolve=PUBLIC):  # type: ignore[no-untyped-def]
    return deliver_attempt(
        client, "https://hooks.example.com/h", "job-1", b'{"x": 1}', SECRET, n, POLICY, [], resolve
    )


def test_2xx_is_delivered_and_the_request_is_signed() -> None:
    client, seen = client_answering(httpx.Response(204))
    record = attempt(client)
    assert record.outcome == "delivered"
    assert record.status_code == 204
    request = seen[0]
    assert request.method == "POST"
    Webhook(SECRET).verify(request.content, dict(request.headers))


def test_410_stops() -> None:
    client, _ = client_answering(httpx.Response(410))
    assert attempt(client).outcome == "stopped"


def test_5xx_is_retried_after_the_backoff() -> None:
    client, _ = client_answering(httpx.Response(503))
    record = attempt(client, n=2)
    assert record.outcome == "retry"
    assert record.next_delay_s is not None
    assert 2.0 <= record.next_delay_s <= 4.0


def test_retry_after_header_is_honoured() -> None:
    client, _ = client_answering(httpx.Response(429, headers={"retry-after": "7"}))
    assert attempt(client).next_delay_s == 7


def test_redirects_are_not_followed() -> None:
    client, seen = client_answering(
        httpx.Response(302, headers={"location": "http://169.254.169.254/"})
    )
    record = attempt(client)
    assert record.outcome == "retry"
    assert len(seen) == 1


def test_network_errors_are_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    record = attempt(client)
    assert record.outcome == "retry"
    assert "ConnectError" in (record.error or "")


def test_the_last_attempt_gives_up() -> None:
    client, _ = client_answering(httpx.Response(500))
    assert attempt(client, n=POLICY.max_attempts).outcome == "gave_up"


def test_refused_hosts_get_no_request() -> None:
    client, seen = client_answering(httpx.Response(200))
    record = attempt(client, resolve=resolver({"hooks.example.com": ["10.0.0.1"]}))
    assert record.outcome == "refused"
    assert seen == []


def test_dns_failure_is_retried() -> None:
    client, seen = client_answering(httpx.Response(200))
    record = attempt(client, resolve=resolver({}))
    assert record.outcome == "retry"
    assert seen == []
