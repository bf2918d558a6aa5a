"""Assertions shared by the RabbitMQ and SQS end-to-end tests."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any

from contracts import ImageResult, JobSummary
from tests.support.callbacks import CallbackReceiver, Delivery
from worker.classify.results import JobLayout, read_results, read_summary
from worker.storage import Storage

QUIET_S = 2.0
"""After a callback arrived, how long to keep watching for an unwanted second one."""


def wait_for_callback(receiver: CallbackReceiver, job_id: str, timeout_s: float) -> Delivery:
    """The delivery the receiver accepted (2xx) for ``job_id``; fails on timeout."""
    found = receiver.wait_delivered([job_id], timeout_s)[job_id]
    accepted = [d for d in found if d.answered < 300]
    assert accepted, f"no callback for {job_id} within {timeout_s} s (got {found})"
    return accepted[0]


def assert_delivered_once(receiver: CallbackReceiver, job_id: str) -> list[Delivery]:
    """Every delivery of the job is signed correctly, and exactly one was accepted."""
    time.sleep(QUIET_S)
    deliveries = receiver.for_job(job_id)
    assert all(d.verified for d in deliveries), "a callback failed signature verification"
    assert sum(d.answered < 300 for d in deliveries) == 1, deliveries
    return deliveries


def job_results(
    storage: Storage, output_uri: str, job_id: str
) -> tuple[JobSummary, list[ImageResult]]:
    layout = JobLayout.of(output_uri, job_id)
    summary = read_summary(storage, layout)
    assert summary is not None, f"no summary.json for {job_id}"
    return summary, read_results(storage, layout, summary.shards)


ABSTAINED = "abstained"


def outcome(result: ImageResult | dict[str, Any]) -> str | None:
    """A result's label, ``abstained`` for an out-of-domain abstention, None for a failure."""
    if isinstance(result, dict):
        result = ImageResult.model_validate_json(json.dumps(result))
    return ABSTAINED if result.abstained else result.label


def assert_matches_embedded(results: list[ImageResult], expected: dict[str, str]) -> None:
    """One result per image, none twice, each label (or abstention) as the embedded mode
    gave it, and every result carrying the default model's domain check."""
    uris = [r.uri for r in results]
    assert len(uris) == len(set(uris)), "an image has more than one result"
    assert set(uris) == set(expected)
    failed = [r for r in results if r.error is not None and not r.abstained]
    assert not failed, failed[:3]
    mismatched = {r.uri for r in results if outcome(r) != expected[r.uri]}
    assert not mismatched, f"{len(mismatched)} labels differ from the embedded mode"
    assert all(r.domain is not None and r.domain.in_domain is not None for r in results)


def scrape(metrics_url: str) -> dict[str, float]:
    """The worker's Prometheus metrics as ``{"name{labels}": value}``."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def batch_sizes(metrics_url: str) -> tuple[float, float, float]:
    """(batches, images, batches of exactly one image) so far."""
    values = scrape(metrics_url)
    return (
        values["synthdetect_batch_size_count"],
        values["synthdetect_batch_size_sum"],
        values['synthdetect_batch_size_bucket{le="1.0"}'],
    )
