"""A callback owed with no message left anywhere is sent by the next worker that starts.

The results bucket holds a finished job (record, part, summary) and its
owed-callback marker, but no delivery record and no queued attempt: what is
left when a finaliser's publish failed for good and its message is gone. A
worker started afterwards finds the marker in its start-up sweep and sends the
callback, once, then removes the marker.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contracts import ClassifyJob, Counts
from tests.e2e.checks import assert_delivered_once, wait_for_callback
from tests.e2e.conftest import Dataset, executable, start_worker, worker_settings
from tests.support.brokers import (
    RABBITMQ_URL,
    delete_amqp_topology,
    require_rabbitmq,
    unique_prefix,
)
from tests.support.callbacks import CallbackReceiver
from tests.support.waiting import wait_until
from worker.classify.owed import OwedCallback
from worker.classify.results import (
    JSON,
    JobLayout,
    JobRecord,
    ShardDone,
    assemble_summary,
    write_job_record,
)
from worker.classify.runner import read_delivery_record
from worker.settings import Settings
from worker.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_worker_start_sends_the_callback_nobody_queued(
    e2e_s3: Settings,
    dataset: Dataset,
    receiver: CallbackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_rabbitmq()
    settings = worker_settings(e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("owed"))
    storage = Storage.from_settings(settings)
    output = f"s3://{dataset.bucket}/results/owed"
    job = ClassifyJob.model_validate(
        {
            "job_id": f"owed-{uuid.uuid4().hex[:8]}",
            "inputs": {"kind": "uris", "uris": sorted(dataset.images)[:1]},
            "output": {"uri": output},
            "callback": {"url": receiver.plan("/owed")},
        }
    )
    layout = JobLayout.of(output, job.job_id)
    then = datetime.now(UTC) - timedelta(minutes=5)
    record = JobRecord(job=job, shards=1, accepted_at=then)
    write_job_record(storage, layout, record)
    storage.put_bytes(layout.part(0), b"")
    marker = ShardDone(
        index=0, counts=Counts(total=0), models=[], started_at=then, finished_at=then
    )
    owed = OwedCallback(job_id=job.job_id, output_uri=output, since=then)
    storage.put_bytes(layout.pending, owed.model_dump_json().encode(), JSON)
    summary = assemble_summary([marker], record, layout)
    storage.put_bytes(layout.summary, summary.model_dump_json().encode(), JSON)

    command = [executable("synthdetect"), "worker", "--concurrency=2"]
    extra = {
        "SYNTHDETECT_CALLBACK_SWEEP_INTERVAL_S": "2",
        "SYNTHDETECT_CALLBACK_SWEEP_BUCKETS": f'["{dataset.bucket}"]',
    }
    worker = start_worker(command, settings, tmp_path_factory.mktemp("owed") / "w.log", extra)
    try:
        wait_for_callback(receiver, job.job_id, timeout_s=60)
        assert_delivered_once(receiver, job.job_id)
        wait_until(lambda: not storage.exists(layout.pending), 10, "the marker to be removed")
        assert worker.events("owed_callback_queued", owed_job_id=job.job_id)
    finally:
        worker.stop()
        delete_amqp_topology(settings)
    delivery = read_delivery_record(storage, output, job.job_id)
    assert delivery is not None
    assert [(a.attempt, a.outcome) for a in delivery.attempts] == [(1, "delivered")]
