"""SIGTERM mid-job: the worker hands back what it cannot finish within the grace, and exits.

The first worker gets a short grace (0.5 s, less than the 2 s a shard keeps for
writing its results) and shards of 250 images, more than it can classify in that
time, so a running shard must stop and give its message back (RabbitMQ: reject
with requeue) instead of holding it until the process is killed. A second worker
then finishes the job: every image exactly once, one summary, one callback. On
SQS (a moto server) the queues' visibility timeout is 10 minutes, so the job
finishes in time only if the handed-back message is visible again at once. The
time from SIGTERM to exit is printed (``pytest -s``).
"""

from __future__ import annotations

import os
import signal
import time
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
    moto_sqs,
    require_rabbitmq,
    unique_prefix,
)
from tests.support.callbacks import CallbackReceiver
from tests.support.waiting import wait_until
from worker.classify.results import JobLayout, done_shards
from worker.queue.topology import setup_sqs_queues
from worker.settings import Settings
from worker.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GRACE_S = 0.5
EXIT_LIMIT_S = GRACE_S + 10.0
"""Handing back takes one image's time; the rest is Celery's own shutdown."""


@pytest.fixture(params=["amqp", "sqs"])
def settings(request: pytest.FixtureRequest, e2e_s3: Settings) -> Iterator[Settings]:
    if request.param == "amqp":
        require_rabbitmq()
        settings = worker_settings(
            e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("term"), shard_size=250
        )
        yield settings
        delete_amqp_topology(settings)
        return
    with moto_sqs() as endpoint:
        settings = worker_settings(
            e2e_s3,
            broker_url="sqs://",
            sqs_endpoint_url=endpoint,
            queue_prefix=unique_prefix("term"),
            shard_size=250,
            sqs_visibility_timeout_s=600,
        )
        setup_sqs_queues(settings)
        yield settings


def test_sigterm_hands_back_the_running_shard_and_the_job_still_finishes(
    settings: Settings,
    dataset: Dataset,
    receiver: CallbackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    logs = tmp_path_factory.mktemp("sigterm")
    command = [executable("synthdetect"), "worker", "--concurrency=2"]
    extra = {"SYNTHDETECT_SHUTDOWN_GRACE_S": str(GRACE_S)}
    first = start_worker(command, settings, logs / "first.log", extra)
    storage = Storage.from_settings(settings)
    output = f"s3://{dataset.bucket}/results/sigterm"
    job = submit_bulk_prefix_job(settings, dataset.prefix, output, receiver, "sigterm")
    layout = JobLayout.of(output, job.job_id)
    wait_until(
        lambda: first.events("job_accepted"),
        120,
        "the job to be accepted",
        interval_s=0.05,
        detail=first.log_tail,
    )
    time.sleep(0.3)  # let the shards classify some images before the signal
    os.killpg(first.process.pid, signal.SIGTERM)
    signalled = time.monotonic()
    first.process.wait(60)
    exit_s = time.monotonic() - signalled
    handed_back = first.events("work_handed_back")
    print(  # the measured figure
        f"\n{settings.broker_kind}: SIGTERM to exit {exit_s:.1f} s (grace {GRACE_S} s); "
        f"{len(handed_back)} message(s) handed back; "
        f"{len(done_shards(storage, layout))} of 2 shards done before"
    )
    assert exit_s < EXIT_LIMIT_S, first.log_tail()
    assert first.events("worker_shutting_down")
    assert handed_back, f"no shard was handed back:\n{first.log_tail()}"

    second = start_worker(command, settings, logs / "second.log")
    try:
        wait_for_callback(receiver, job.job_id, timeout_s=240)
        assert_delivered_once(receiver, job.job_id)
    finally:
        second.stop()
    summary, results = job_results(storage, output, job.job_id)
    assert summary.status == "succeeded"
    assert summary.counts.total == 500
    assert sorted(r.uri for r in results) == sorted(dataset.images)
    assert_matches_embedded(results, dataset.labels)
