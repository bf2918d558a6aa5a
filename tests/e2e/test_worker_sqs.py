"""``celery -A worker.queue.app worker`` on SQS (a moto server), fed by boto3 and ``submit_job``."""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from collections.abc import Iterator

import pytest

from contracts import ClassifyJob
from tests.e2e.checks import (
    assert_delivered_once,
    assert_matches_embedded,
    job_results,
    wait_for_callback,
)
from tests.e2e.conftest import Dataset, WorkerProcess, executable, start_worker, worker_settings
from tests.support.brokers import moto_sqs, unique_prefix
from tests.support.callbacks import CallbackReceiver
from worker.queue.producer import submit_job
from worker.queue.topology import QueueNames, setup_sqs_queues, sqs_client
from worker.settings import Settings
from worker.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker(e2e_s3: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with moto_sqs() as endpoint:
        settings = worker_settings(
            e2e_s3,
            broker_url="sqs://",
            sqs_endpoint_url=endpoint,
            queue_prefix=unique_prefix("sqs"),
            sqs_visibility_timeout_s=120,
        )
        setup_sqs_queues(settings)  # what `synthdetect queues setup` does
        log_path = tmp_path_factory.mktemp("sqs-worker") / "worker.log"
        command = [executable("celery"), "-A", "worker.queue.app", "worker", "--loglevel=INFO"]
        process = start_worker(command, settings, log_path)
        yield process
        process.stop()


@pytest.fixture
def sqs(worker: WorkerProcess):  # type: ignore[no-untyped-def]
    return sqs_client(worker.settings)


def queue_url(sqs, name: str) -> str:  # type: ignore[no-untyped-def]
    return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])


def test_500_images_via_sqs_send_message(
    worker: WorkerProcess, dataset: Dataset, receiver: CallbackReceiver, sqs
) -> None:  # type: ignore[no-untyped-def]
    storage = Storage.from_settings(worker.settings)
    manifest = f"s3://{dataset.bucket}/manifests/all.jsonl"
    rows = [{"uri": uri, "label": uri.split("/")[-2]} for uri in sorted(dataset.images)]
    storage.put_bytes(manifest, "\n".join(json.dumps(r) for r in rows).encode())
    job_id = f"sqs-500-{uuid.uuid4().hex[:8]}"
    output = f"s3://{dataset.bucket}/results/sqs"
    body = {
        "job_id": job_id,
        "inputs": {"kind": "manifest", "manifest": manifest},
        "output": {"uri": output},
        "callback": {"url": receiver.plan("/sqs-500")},
    }
    started = time.monotonic()
    names = QueueNames.from_settings(worker.settings)
    sqs.send_message(QueueUrl=queue_url(sqs, names.jobs), MessageBody=json.dumps(body))
    delivery = wait_for_callback(receiver, job_id, timeout_s=180)
    elapsed = time.monotonic() - started
    assert_delivered_once(receiver, job_id)
    assert delivery.body["status"] == "succeeded"
    summary, results = job_results(storage, output, job_id)
    assert summary.counts.total == 500
    assert_matches_embedded(results, dataset.labels)
    assert {r.true_label for r in results} == {row["label"] for row in rows}  # echoed labels
    print(
        f"\nSQS 500-image job: {500 / elapsed:.0f} images/s end to end "
        f"({elapsed:.1f} s), {summary.timings.images_per_s:.0f} images/s in the worker"
    )


def test_python_producer_with_a_sharded_tar(
    worker: WorkerProcess, dataset: Dataset, receiver: CallbackReceiver
) -> None:
    storage = Storage.from_settings(worker.settings)
    members = sorted(dataset.images)[:230]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for uri in members:
            info = tarfile.TarInfo(uri.split("/", 3)[3])
            info.size = len(dataset.images[uri])
            archive.addfile(info, io.BytesIO(dataset.images[uri]))
    tar_uri = f"s3://{dataset.bucket}/tars/sample.tar"
    storage.put_bytes(tar_uri, buffer.getvalue())
    job = ClassifyJob.model_validate(
        {
            "job_id": f"sqs-tar-{uuid.uuid4().hex[:8]}",
            "inputs": {"kind": "tar", "tar": tar_uri},
            "output": {"uri": f"s3://{dataset.bucket}/results/tar"},
            "priority": "bulk",
            "callback": {"url": receiver.plan("/sqs-tar")},
        }
    )
    submit_job(job, worker.settings)
    assert wait_for_callback(receiver, job.job_id, timeout_s=180).body["status"] == "succeeded"
    summary, results = job_results(storage, job.output.uri, job.job_id)
    assert summary.shards == 3  # 230 members, 100 per shard
    expected = {f"{tar_uri}#{uri.split('/', 3)[3]}": dataset.labels[uri] for uri in members}
    assert_matches_embedded(results, expected)


def test_poison_messages_are_dead_lettered_with_their_reason(
    worker: WorkerProcess, dataset: Dataset, receiver: CallbackReceiver, sqs
) -> None:  # type: ignore[no-untyped-def]
    names = QueueNames.from_settings(worker.settings)
    jobs_url = queue_url(sqs, names.jobs)
    sqs.send_message(QueueUrl=jobs_url, MessageBody="not json at all")
    wrong_model = {
        "job_id": "wrong-model",
        "model": {"name": "no-such-model"},
        "inputs": {"kind": "uris", "uris": sorted(dataset.images)[:1]},
        "output": {"uri": f"s3://{dataset.bucket}/results/poison"},
    }
    sqs.send_message(QueueUrl=jobs_url, MessageBody=json.dumps(wrong_model))
    good_id = f"sqs-after-poison-{uuid.uuid4().hex[:8]}"
    good = {**wrong_model, "job_id": good_id, "callback": {"url": receiver.plan("/sqs-ok")}}
    del good["model"]
    sqs.send_message(QueueUrl=jobs_url, MessageBody=json.dumps(good))
    assert wait_for_callback(receiver, good_id, timeout_s=120).body["status"] == "succeeded"
    reasons = {}
    deadline = time.monotonic() + 30
    while len(reasons) < 2 and time.monotonic() < deadline:
        got = sqs.receive_message(
            QueueUrl=queue_url(sqs, names.dead), WaitTimeSeconds=1, MaxNumberOfMessages=10
        )
        for message in got.get("Messages", []):
            letter = json.loads(message["Body"])
            reasons[letter["job_id"]] = letter["reason"]
    assert reasons[None].startswith("not JSON")  # type: ignore[index]
    assert reasons["wrong-model"].startswith("unknown model")


def test_garbage_on_a_celery_task_queue_is_dead_lettered_with_a_reason(
    worker: WorkerProcess, sqs
) -> None:  # type: ignore[no-untyped-def]
    """What a producer that confuses the queues sends: bare bodies on the task queues."""
    names = QueueNames.from_settings(worker.settings)
    sqs.send_message(QueueUrl=queue_url(sqs, names.classify), MessageBody="garbage, not JSON")
    retrain = {"job_id": "sqs-retrain-1", "dataset": {"kind": "tar", "tar": "s3://d1/x.tar"}}
    sqs.send_message(QueueUrl=queue_url(sqs, names.bulk), MessageBody=json.dumps(retrain))
    letters: list[dict[str, object]] = []
    deadline = time.monotonic() + 60
    while len(letters) < 2 and time.monotonic() < deadline:
        got = sqs.receive_message(
            QueueUrl=queue_url(sqs, names.dead),
            WaitTimeSeconds=1,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
        )
        for message in got.get("Messages", []):
            letter = json.loads(message["Body"])
            assert message["MessageAttributes"]["reason"]["StringValue"] == letter["reason"]
            letters.append(letter)
    by_source = {str(letter["source_queue"]): str(letter["reason"]) for letter in letters}
    assert set(by_source) == {names.classify, names.bulk}, letters
    assert all(reason.startswith("not a task message") for reason in by_source.values())
    assert names.retrain_jobs in by_source[names.bulk]
