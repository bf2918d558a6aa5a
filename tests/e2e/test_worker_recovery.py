"""A worker killed mid-job: its unacknowledged shards are redelivered to the next worker.

The job still ends with exactly one result per image (redelivered shards
overwrite their own parts) and exactly one accepted callback.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.e2e.checks import (
    assert_delivered_once,
    assert_matches_embedded,
    job_results,
    wait_for_callback,
)
from tests.e2e.conftest import (
    Dataset,
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
from worker.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def settings(e2e_s3: Settings) -> Iterator[Settings]:
    require_rabbitmq()
    settings = worker_settings(
        e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("crash"), shard_size=10
    )
    yield settings
    delete_amqp_topology(settings)


def test_a_killed_worker_loses_nothing(
    settings: Settings,
    dataset: Dataset,
    receiver: CallbackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    logs = tmp_path_factory.mktemp("crash")
    command = [executable("synthdetect"), "worker", "--concurrency=2"]
    first = start_worker(command, settings, logs / "first.log")
    storage = Storage.from_settings(settings)
    output = f"s3://{dataset.bucket}/results/crash"
    job = submit_bulk_prefix_job(settings, dataset.prefix, output, receiver, "crash")
    layout = JobLayout.of(output, job.job_id)
    wait_until(
        lambda: len(done_shards(storage, layout)) >= 3,
        120,
        "3 shards of the job to finish",
        interval_s=0.05,  # kill the worker soon after, long before the job is done
        detail=first.log_tail,
    )
    os.killpg(first.process.pid, signal.SIGKILL)  # no goodbye: messages stay unacknowledged
    first.process.wait(10)
    finished_before_kill = len(done_shards(storage, layout))
    assert finished_before_kill < 50, "the job finished before the worker could be killed"

    second = start_worker(command, settings, logs / "second.log")
    try:
        wait_for_callback(receiver, job.job_id, timeout_s=240)
        assert_delivered_once(receiver, job.job_id)
    finally:
        second.stop()
    summary, results = job_results(storage, output, job.job_id)
    assert summary.shards == 50
    assert summary.counts.total == 500
    assert_matches_embedded(results, dataset.labels)
