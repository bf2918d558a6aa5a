"""Jobs through the real road: publish to RabbitMQ, wait for the summary or the callback.

Times run from just before the publish (the producer's ``submit_job``) to the
moment the summary object exists (polled every 20 ms) or the verified callback
arrived (timestamped by the receiver, so polling adds nothing).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from celery import Celery

from contracts import Callback, ClassifyJob, OutputLocation, PrefixInput, TarInput, UriListInput
from contracts.jobs import JobInputs
from scripts.throughput.services import CallbackLog
from worker.classify.results import JobLayout, read_summary
from worker.queue.producer import submit_job
from worker.settings import Settings
from worker.storage import Storage


@dataclass(frozen=True)
class JobRun:
    """One finished job: images, seconds from publish to summary, the summary's status."""

    images: int
    seconds: float
    status: str

    @property
    def per_s(self) -> float:
        return self.images / self.seconds


def new_job_id(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:10]}"


def prefix_inputs(prefix: str) -> PrefixInput:
    return PrefixInput(prefix=prefix)


def tar_inputs(uri: str) -> TarInput:
    return TarInput(tar=uri)


def submit(
    app: Celery,
    settings: Settings,
    inputs: JobInputs,
    output: str,
    priority: str,
    callback_url: str | None = None,
    kind: str = "job",
) -> ClassifyJob:
    job = ClassifyJob(
        job_id=new_job_id(kind),
        inputs=inputs,
        output=OutputLocation(uri=output),
        priority="bulk" if priority == "bulk" else "interactive",
        callback=Callback(url=callback_url) if callback_url else None,  # type: ignore[arg-type]
    )
    submit_job(job, settings, app)
    return job


def run_to_summary(
    app: Celery,
    settings: Settings,
    storage: Storage,
    inputs: JobInputs,
    output: str,
    images: int,
    timeout_s: float,
) -> JobRun:
    """Publish a bulk job and wait for its ``summary.json``."""
    started = time.monotonic()
    job = submit(app, settings, inputs, output, "bulk", kind="bulk")
    return wait_for_summary(storage, job, started, images, timeout_s)


def wait_for_summary(
    storage: Storage, job: ClassifyJob, started: float, images: int, timeout_s: float
) -> JobRun:
    layout = JobLayout.of(job.output.uri, job.job_id)
    while True:
        summary = read_summary(storage, layout)
        if summary is not None:
            elapsed = time.monotonic() - started
            if summary.counts.total != images:
                raise RuntimeError(
                    f"job {job.job_id} has {summary.counts.total} results, expected {images}"
                )
            return JobRun(images, elapsed, summary.status)
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"no summary for {job.job_id} after {timeout_s} s")
        time.sleep(0.02)


def one_image_latencies(
    app: Celery,
    settings: Settings,
    callbacks: CallbackLog,
    callback_url: str,
    uris: list[str],
    output: str,
    timeout_s: float = 60.0,
) -> list[float]:
    """Send one one-image interactive job at a time; seconds from publish to callback."""
    latencies = []
    for uri in uris:
        started = time.monotonic()
        job = submit(
            app, settings, UriListInput(uris=[uri]), output, "interactive", callback_url, "one"
        )
        arrived = callbacks.wait(job.job_id, timeout_s)
        if arrived is None:
            raise TimeoutError(f"no callback for {job.job_id} within {timeout_s} s")
        latencies.append(arrived - started)
    return latencies


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
