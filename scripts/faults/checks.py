"""What every fault case asserts about a job once the fault is over.

- each input appears exactly once in the results (and nothing else does);
- there is one summary, and it counts every input;
- there is one logical callback: every request carries the job's ``webhook-id``
  with a valid signature, and exactly one was accepted (the receiver counts the
  deliveries; more than one accepted delivery is a duplicate callback);
- the worker still serves: a small follow-up job gets its callback.

Waiting polls real state (the results bucket, the receiver) with a deadline; S3
may be down while we poll, so storage errors count as "not yet".
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from celery import Celery

from contracts import ClassifyJob, ImageResult, JobSummary
from scripts.faults.receiver import Delivery
from scripts.faults.stack import Stack
from worker.classify.results import JobLayout, done_shards, read_results, read_summary
from worker.errors import StorageError
from worker.queue.producer import submit_job
from worker.settings import Settings
from worker.webhooks.delivery import DeliveryRecord

QUIET_S = 2.0
"""After the callback arrived, how long to keep listening for an unwanted second one."""

T = TypeVar("T")


class CaseFailed(AssertionError):
    """A check did not hold; the message says which and why."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CaseFailed(message)


def wait_for(condition: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """The first value of ``condition`` that is not None/False; ``CaseFailed`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except StorageError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise CaseFailed(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


def make_job(
    stack: Stack, uris: list[str], path: str, *, tag: str, inputs: object = None, url: str = ""
) -> ClassifyJob:
    """A classify job over ``uris`` (or ``inputs``) with a callback to ``path`` of the
    receiver (or to ``url``)."""
    job_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    return ClassifyJob.model_validate(
        {
            "job_id": job_id,
            "inputs": inputs or {"kind": "uris", "uris": uris},
            "output": {"uri": f"s3://{stack.bucket}/results/{tag}"},
            "priority": "bulk",
            "callback": {"url": url or stack.receiver.base_url + path},
        }
    )


def layout(job: ClassifyJob) -> JobLayout:
    return JobLayout.of(job.output.uri, job.job_id)


def shards_done(stack: Stack, job: ClassifyJob) -> int:
    """How many of the job's shards have a done marker (0 while S3 is down)."""
    try:
        return len(done_shards(stack.storage, layout(job)))
    except StorageError:
        return 0


def delivery_record(stack: Stack, job: ClassifyJob) -> DeliveryRecord | None:
    try:
        return DeliveryRecord.model_validate_json(stack.storage.get_bytes(layout(job).delivery))
    except StorageError:
        return None


@dataclass
class Finished:
    """A job as it ended: summary, results, the receiver's view and ``delivery.json``."""

    job: ClassifyJob
    seconds: float
    """From submission to the callback's last attempt (or the summary, without one)."""
    summary: JobSummary
    results: list[ImageResult]
    deliveries: list[Delivery]
    record: DeliveryRecord | None

    @property
    def accepted(self) -> int:
        return sum(d.accepted for d in self.deliveries)

    def callback_note(self) -> str:
        answers = ",".join(
            "hang" if d.answer.hang_s else str(d.answer.status) for d in self.deliveries
        )
        state = self.record.state if self.record else "no delivery.json"
        return f"{self.summary.status}; callback {answers or 'none'} ({state})"


def wait_finished(
    stack: Stack, job: ClassifyJob, started: float, timeout_s: float, *, delivered: bool = True
) -> Finished:
    """Wait for the summary, then for the callback's end (accepted, or ``delivery.json``
    finished when ``delivered`` is False), then ``QUIET_S`` more for duplicates."""
    summary = wait_for(
        lambda: read_summary(stack.storage, layout(job)), timeout_s, f"the summary of {job.job_id}"
    )
    left = max(timeout_s - (time.monotonic() - started), 30.0)
    if delivered:
        wait_for(
            lambda: any(d.accepted for d in stack.receiver.for_job(job.job_id)),
            left,
            f"an accepted callback for {job.job_id}",
        )
    else:
        wait_for(
            lambda: (r := delivery_record(stack, job)) is not None and r.finished,
            left,
            f"delivery.json of {job.job_id} to finish",
        )
    deliveries = stack.receiver.for_job(job.job_id)
    finished_at = deliveries[-1].at if deliveries else time.monotonic()
    time.sleep(QUIET_S)
    results = read_results(stack.storage, layout(job), summary.shards)
    return Finished(
        job,
        finished_at - started,
        summary,
        results,
        stack.receiver.for_job(job.job_id),
        delivery_record(stack, job),
    )


def assert_complete(
    done: Finished,
    expected: list[str],
    *,
    accepted: int = 1,
    optional: frozenset[str] = frozenset(),
) -> None:
    """Each expected input exactly once (``optional`` ones at most once), nothing else,
    a summary that counts them, and one logical, correctly signed callback."""
    counts = Counter(r.uri for r in done.results)
    twice = sorted(uri for uri, n in counts.items() if n > 1)
    missing = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected) - optional)
    check(not twice, f"{len(twice)} inputs have more than one result, e.g. {twice[:2]}")
    check(not missing, f"{len(missing)} inputs have no result, e.g. {missing[:2]}")
    check(not extra, f"{len(extra)} results for unknown inputs, e.g. {extra[:2]}")
    check(
        done.summary.counts.total == len(done.results),
        f"summary counts {done.summary.counts.total} images, results hold {len(done.results)}",
    )
    check(done.summary.job_id == done.job.job_id, "the summary names another job")
    ids = {d.webhook_id for d in done.deliveries}
    check(ids <= {done.job.job_id}, f"callbacks with foreign webhook-ids {ids}")
    check(all(d.verified for d in done.deliveries), "a callback failed signature verification")
    check(
        done.accepted == accepted,
        f"{done.accepted} accepted callback deliveries, expected {accepted} "
        f"({len(done.deliveries)} requests: {done.callback_note()})",
    )
    if done.record is not None and accepted:
        check(done.record.state == "delivered", f"delivery.json says {done.record.state}")


def submit(stack: Stack, settings: Settings, app: Celery, job: ClassifyJob) -> float:
    """Publish ``job``; returns the monotonic time just before."""
    started = time.monotonic()
    submit_job(job, settings, app)
    return started


def follow_up(stack: Stack, settings: Settings, app: Celery, timeout_s: float = 120.0) -> float:
    """A two-image job after the fault: the worker must still serve. Returns seconds."""
    uris = stack.images[:2]
    job = make_job(stack, uris, "/follow-up", tag="follow-up")
    started = submit(stack, settings, app, job)
    try:
        done = wait_finished(stack, job, started, timeout_s)
    except CaseFailed as exc:
        raise CaseFailed(f"the worker no longer serves: follow-up job: {exc}") from exc
    assert_complete(done, uris)
    return done.seconds
