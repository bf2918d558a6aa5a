"""RabbitMQ stopped at finalisation: the callback still arrives, exactly once.

A private RabbitMQ node (tests/support/rabbitmq_node.py) carries the job. The
receiver holds the job's first callback attempt unanswered: at that moment the
summary exists and the worker is inside the finalising task. The test stops the
broker, then lets the receiver answer 503, so the worker must queue the next
attempt while the broker is down (and acknowledge the job's message, which it
cannot). Once the broker is back, the retried publish (and the job's redelivered
message, whose attempt claim keeps it from posting twice) lead to exactly one
accepted callback, and ``delivery.json`` records every attempt.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from contracts import ClassifyJob
from tests.e2e.checks import assert_delivered_once, wait_for_callback
from tests.e2e.conftest import Dataset, executable, start_worker, worker_settings
from tests.support.brokers import unique_prefix
from tests.support.callbacks import CallbackReceiver
from tests.support.rabbitmq_node import PrivateRabbitMQ
from tests.support.waiting import wait_until
from worker.classify import runner as jobs
from worker.queue.producer import submit_job
from worker.settings import Settings
from worker.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def broker() -> Iterator[PrivateRabbitMQ]:
    node = PrivateRabbitMQ()
    try:
        node.start()
        yield node
    finally:
        node.remove()


def test_the_broker_restarted_at_finalisation_loses_no_callback(
    broker: PrivateRabbitMQ,
    e2e_s3: Settings,
    dataset: Dataset,
    receiver: CallbackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = worker_settings(e2e_s3, broker_url=broker.url, queue_prefix=unique_prefix("fin"))
    command = [executable("synthdetect"), "worker", "--concurrency=2"]
    worker = start_worker(
        command,
        settings,
        tmp_path_factory.mktemp("finalisation") / "worker.log",
        {"SYNTHDETECT_BROKER_PUBLISH_RETRY_S": "300"},
    )
    storage = Storage.from_settings(settings)
    output = f"s3://{dataset.bucket}/results/finalisation"
    job = ClassifyJob.model_validate(
        {
            "job_id": f"fin-{uuid.uuid4().hex[:8]}",
            "inputs": {"kind": "uris", "uris": sorted(dataset.images)[:3]},
            "output": {"uri": output},
            "callback": {"url": receiver.plan("/finalisation", 503)},
        }
    )
    held = receiver.hold("/finalisation")
    try:
        submit_job(job, settings)
        assert held.arrived.wait(120), worker.log_tail()
        assert jobs.read_summary(storage, jobs.JobLayout.of(output, job.job_id)) is not None
        broker.stop()
        stopped = time.monotonic()
        held.release.set()  # 503: the next attempt must be queued on a broker that is down

        def first_attempt_recorded() -> bool:
            record = jobs.read_delivery_record(storage, output, job.job_id)
            return record is not None and len(record.attempts) >= 1

        wait_until(first_attempt_recorded, 30, "the 503 to be recorded", detail=worker.log_tail)
        assert receiver.for_job(job.job_id)[0].answered == 503
        broker.start()
        restarted = time.monotonic()
        wait_for_callback(receiver, job.job_id, timeout_s=180)
        print(  # the measured figures
            f"\nbroker down {restarted - stopped:.1f} s; restart to callback "
            f"{time.monotonic() - restarted:.1f} s"
        )
        deliveries = assert_delivered_once(receiver, job.job_id)
    finally:
        held.release.set()
        worker.stop()
    assert [d.answered for d in deliveries] == [503, 200]
    record = jobs.read_delivery_record(storage, output, job.job_id)
    assert record is not None
    assert record.state == "delivered"
    assert [(a.attempt, a.outcome) for a in record.attempts] == [(1, "retry"), (2, "delivered")]
    assert not storage.exists(jobs.JobLayout.of(output, job.job_id).pending)
