"""S3 stopped under a running job, with real worker processes, SeaweedFS and RabbitMQ.

A private SeaweedFS (its own ports and data folder) is stopped mid-job and started
again on the same ports with the same data:

- an outage shorter than the retry window only delays the job: it succeeds, every
  image once, one callback;
- an outage longer than the window (15 s here) makes the running shards give up:
  the job ends ``partial`` with the unread images listed as ``storage_unavailable``
  and one callback, as soon as the results bucket is writable again.

The figures (outage length, restart-to-callback time) are printed (``pytest -s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts import ClassifyJob, ErrorCode
from scripts.dev_s3 import DEV_REGION, SeaweedPorts, SeaweedServer
from tests.e2e.checks import (
    assert_delivered_once,
    job_results,
    outcome,
    wait_for_callback,
)
from tests.e2e.conftest import (
    WorkerProcess,
    executable,
    start_worker,
    submit_bulk_prefix_job,
    worker_settings,
)
from tests.support.brokers import (
    RABBITMQ_URL,
    delete_amqp_topology,
    require_rabbitmq,
    unique_prefix,
)
from tests.support.callbacks import CallbackReceiver
from tests.support.waiting import wait_until
from worker.classify.results import JobLayout, done_shards
from worker.settings import Settings
from worker.storage import S3Store, Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SAMPLE = Path(__file__).parents[1] / "data" / "cifake-sample"
IMAGES = 60
SHARD_SIZE = 5
SHORT_OUTAGE_S = 10.0


class PrivateS3:
    """A SeaweedFS that may be stopped and started again on the same ports and data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = SeaweedPorts.free()
        self.server: SeaweedServer | None = SeaweedServer.start(folder, self.ports)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace_s=3.0)
            self.server = None

    def start(self) -> None:
        self.server = SeaweedServer.start(self.folder, self.ports)


@pytest.fixture
def s3(tmp_path_factory: pytest.TempPathFactory, aws_env: None) -> Iterator[PrivateS3]:
    server = PrivateS3(tmp_path_factory.mktemp("private-s3"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def images(s3: PrivateS3) -> list[str]:
    """``IMAGES`` sample images in a bucket of the private server."""
    settings = Settings(s3_endpoint_url=s3.endpoint_url, s3_region=DEV_REGION)
    client = S3Store.from_settings(settings).client
    client.create_bucket(Bucket="inputs")
    uris = []
    for path in sorted(SAMPLE.glob("*/*.jpg"))[:IMAGES]:
        key = f"outage/{path.parent.name}/{path.name}"
        client.put_object(Bucket="inputs", Key=key, Body=path.read_bytes())
        uris.append(f"s3://inputs/{key}")
    client.create_bucket(Bucket="results")
    return uris


def outage_worker(
    s3: PrivateS3, logs: Path, window_s: float
) -> tuple[Settings, WorkerProcess, Storage]:
    require_rabbitmq()
    base = Settings(s3_endpoint_url=s3.endpoint_url, s3_region=DEV_REGION, device="cpu")
    settings = worker_settings(
        base,
        broker_url=RABBITMQ_URL,
        queue_prefix=unique_prefix("outage"),
        shard_size=SHARD_SIZE,
    )
    extra = {
        "SYNTHDETECT_STORAGE_RETRY_WINDOW_S": str(window_s),
        "SYNTHDETECT_STORAGE_RETRY_BACKOFF_BASE_S": "0.5",
        "SYNTHDETECT_STORAGE_RETRY_BACKOFF_MAX_S": "2",
        "SYNTHDETECT_BULK_CONCURRENCY": "1",
        "SYNTHDETECT_CALLBACK_SWEEP_BUCKETS": '["results"]',
    }
    command = [executable("synthdetect"), "worker", "--concurrency=2"]
    worker = start_worker(command, settings, logs / "worker.log", extra)
    return settings, worker, Storage.from_settings(settings)


def submit(settings: Settings, receiver: CallbackReceiver, name: str) -> ClassifyJob:
    return submit_bulk_prefix_job(
        settings, "s3://inputs/outage/", "s3://results/out", receiver, name
    )


def wait_for_first_shard(storage: Storage, layout: JobLayout, worker: WorkerProcess) -> None:
    wait_until(
        lambda: len(done_shards(storage, layout)) >= 1,
        120,
        "the first shard to finish",
        interval_s=0.05,
        detail=worker.log_tail,
    )


def test_a_short_s3_outage_only_delays_the_job(
    s3: PrivateS3,
    images: list[str],
    receiver: CallbackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings, worker, storage = outage_worker(s3, tmp_path_factory.mktemp("short"), 120)
    try:
        job = submit(settings, receiver, "short")
        layout = JobLayout.of(job.output.uri, job.job_id)
        wait_for_first_shard(storage, layout, worker)
        stopped = time.monotonic()
        s3.stop()
        wait_until(
            lambda: worker.events("storage_retry") and time.monotonic() - stopped >= SHORT_OUTAGE_S,
            60,
            "a shard retrying storage for the outage's length",
            detail=worker.log_tail,
        )
        s3.start()
        restarted = time.monotonic()
        wait_for_callback(receiver, job.job_id, timeout_s=120)
        print(
            f"\nS3 outage {restarted - stopped:.1f} s; restart to callback "
            f"{time.monotonic() - restarted:.1f} s"
        )
        assert_delivered_once(receiver, job.job_id)
        assert worker.events("storage_gave_up") == []
    finally:
        worker.stop()
        delete_amqp_topology(settings)
    summary, results = job_results(storage, job.output.uri, job.job_id)
    assert summary.status == "succeeded", summary.error
    assert sorted(r.uri for r in results) == sorted(images)
    assert all(outcome(r) is not None for r in results)


def test_an_s3_outage_longer_than_the_window_ends_the_job_partial(
    s3: PrivateS3,
    images: list[str],
    receiver: CallbackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings, worker, storage = outage_worker(s3, tmp_path_factory.mktemp("long"), 15)
    try:
        job = submit(settings, receiver, "long")
        layout = JobLayout.of(job.output.uri, job.job_id)
        wait_for_first_shard(storage, layout, worker)
        finished_before = len(done_shards(storage, layout))
        assert finished_before < IMAGES // SHARD_SIZE, "the job ended before S3 could be stopped"
        stopped = time.monotonic()
        s3.stop()
        wait_until(
            lambda: worker.events("storage_gave_up"),
            90,
            "a shard to give up after the 15 s window",
            detail=worker.log_tail,
        )
        gave_up_after = time.monotonic() - stopped
        s3.start()
        restarted = time.monotonic()
        wait_for_callback(receiver, job.job_id, timeout_s=120)
        print(
            f"\nfirst give-up {gave_up_after:.1f} s after S3 stopped (window 15 s); "
            f"outage {restarted - stopped:.1f} s; restart to callback "
            f"{time.monotonic() - restarted:.1f} s"
        )
        deliveries = assert_delivered_once(receiver, job.job_id)
    finally:
        worker.stop()
        delete_amqp_topology(settings)
    summary, results = job_results(storage, job.output.uri, job.job_id)
    assert summary.status == "partial"
    assert sorted(r.uri for r in results) == sorted(images)  # every image, exactly once
    unavailable = [r for r in results if r.error and r.error.code == ErrorCode.STORAGE_UNAVAILABLE]
    assert unavailable
    assert summary.counts.by_error.get(ErrorCode.STORAGE_UNAVAILABLE) == len(unavailable)
    assert summary.failed_shards
    assert {f.code for f in summary.failed_shards} == {ErrorCode.STORAGE_UNAVAILABLE}
    accepted = [d for d in deliveries if d.answered < 300]
    assert accepted[0].body["status"] == "partial"
