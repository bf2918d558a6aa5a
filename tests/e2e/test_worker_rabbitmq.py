"""A real ``synthdetect worker`` on RabbitMQ, fed by pika (plain JSON) and by ``submit_job``."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pika
import pytest
from celery import Celery
from PIL import Image

from contracts import ClassifyJob, ErrorCode
from tests.e2e.checks import (
    ABSTAINED,
    assert_delivered_once,
    assert_matches_embedded,
    batch_sizes,
    job_results,
    outcome,
    wait_for_callback,
)
from tests.e2e.conftest import (
    Dataset,
    WorkerProcess,
    executable,
    start_worker,
    worker_settings,
)
from tests.support.brokers import (
    RABBITMQ_URL,
    delete_amqp_topology,
    require_rabbitmq,
    unique_prefix,
)
from tests.support.callbacks import CallbackReceiver
from worker.classify.results import JobLayout
from worker.queue.producer import producer_app, submit_job
from worker.queue.topology import QueueNames
from worker.settings import Settings
from worker.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker(e2e_s3: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    require_rabbitmq()
    settings = worker_settings(e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("amqp"))
    log_path = tmp_path_factory.mktemp("amqp-worker") / "worker.log"
    process = start_worker([executable("synthdetect"), "worker"], settings, log_path)
    yield process
    process.stop()
    delete_amqp_topology(settings)


@pytest.fixture(scope="module")
def app(worker: WorkerProcess) -> Celery:
    return producer_app(worker.settings)


@pytest.fixture
def storage(worker: WorkerProcess) -> Storage:
    return Storage.from_settings(worker.settings)


def phone_photo() -> bytes:
    """A 1600x1200 JPEG: the size of a downscaled phone photo."""
    pixels = np.random.default_rng(7).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def publish_plain(queue: str, body: bytes) -> None:
    """What a producer in any language does: one AMQP publish of a JSON body."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        connection.channel().basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(content_type="application/json", delivery_mode=2),
        )
    finally:
        connection.close()


def new_job_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_500_images_via_plain_amqp(
    worker: WorkerProcess, dataset: Dataset, receiver: CallbackReceiver, storage: Storage
) -> None:
    job_id = new_job_id("amqp-500")
    output = f"s3://{dataset.bucket}/results/amqp"
    body = {
        "job_id": job_id,
        "inputs": {"kind": "prefix", "prefix": dataset.prefix},
        "output": {"uri": output},
        "priority": "bulk",
        "callback": {"url": receiver.plan("/amqp-500")},
    }
    started = time.monotonic()
    publish_plain(QueueNames.from_settings(worker.settings).jobs, json.dumps(body).encode())
    delivery = wait_for_callback(receiver, job_id, timeout_s=180)
    elapsed = time.monotonic() - started
    assert_delivered_once(receiver, job_id)
    assert delivery.body["status"] == "succeeded"
    assert delivery.body["counts"]["total"] == 500
    assert "results" not in delivery.body  # 500 results do not fit in 20 kB
    summary, results = job_results(storage, output, job_id)
    assert summary.shards == 5
    assert_matches_embedded(results, dataset.labels)
    print(
        f"\nRabbitMQ 500-image job: {500 / elapsed:.0f} images/s end to end "
        f"({elapsed:.1f} s), {summary.timings.images_per_s:.0f} images/s in the worker"
    )


def test_50_concurrent_one_image_jobs_share_batches(
    worker: WorkerProcess, app: Celery, dataset: Dataset, receiver: CallbackReceiver
) -> None:
    before = batch_sizes(worker.metrics_url)
    uris = sorted(dataset.images)[:50]
    url = receiver.plan("/small")
    job_ids = []
    for uri in uris:
        job = ClassifyJob.model_validate(
            {
                "job_id": new_job_id("small"),
                "inputs": {"kind": "uris", "uris": [uri]},
                "output": {"uri": f"s3://{dataset.bucket}/results/small"},
                "callback": {"url": url},
            }
        )
        job_ids.append(submit_job(job, worker.settings, app))
    found = receiver.wait_delivered(job_ids, timeout_s=180)
    for job_id, uri in zip(job_ids, uris, strict=True):
        accepted = [d for d in found[job_id] if d.answered < 300]
        assert len(accepted) == 1, f"{job_id}: {found[job_id]}"
        (result,) = accepted[0].body["results"]  # small jobs: results inline
        assert result["uri"] == uri
        assert outcome(result) == dataset.labels[uri]
        assert accepted[0].verified
    batches, images, singles = (
        a - b for a, b in zip(batch_sizes(worker.metrics_url), before, strict=True)
    )
    assert images == 50
    assert batches < 50, "every image ran in a batch of its own"
    assert singles < batches  # at least one batch held images of several jobs


def test_a_flaky_callback_gets_the_delivery_on_the_third_attempt(
    worker: WorkerProcess,
    app: Celery,
    dataset: Dataset,
    receiver: CallbackReceiver,
    storage: Storage,
) -> None:
    output = f"s3://{dataset.bucket}/results/flaky"
    job = ClassifyJob.model_validate(
        {
            "job_id": new_job_id("flaky"),
            "inputs": {"kind": "uris", "uris": sorted(dataset.images)[:3]},
            "output": {"uri": output},
            "callback": {"url": receiver.plan("/flaky", 500, 503)},
        }
    )
    submit_job(job, worker.settings, app)
    wait_for_callback(receiver, job.job_id, timeout_s=120)
    deliveries = assert_delivered_once(receiver, job.job_id)
    assert [d.answered for d in deliveries] == [500, 503, 200]
    assert {d.webhook_id for d in deliveries} == {job.job_id}
    record = json.loads(storage.get_bytes(JobLayout.of(output, job.job_id).delivery))
    assert record["state"] == "delivered"
    assert [a["status_code"] for a in record["attempts"]] == [500, 503, 200]


def test_a_poison_message_is_dead_lettered_and_the_next_job_succeeds(
    worker: WorkerProcess, dataset: Dataset, receiver: CallbackReceiver
) -> None:
    names = QueueNames.from_settings(worker.settings)
    publish_plain(names.jobs, b"{this is not json")
    job_id = new_job_id("after-poison")
    good = {
        "job_id": job_id,
        "inputs": {"kind": "uris", "uris": sorted(dataset.images)[:1]},
        "output": {"uri": f"s3://{dataset.bucket}/results/poison"},
        "callback": {"url": receiver.plan("/after-poison")},
    }
    publish_plain(names.jobs, json.dumps(good).encode())
    assert wait_for_callback(receiver, job_id, timeout_s=120).body["status"] == "succeeded"
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        channel = connection.channel()
        method, properties, body = channel.basic_get(names.dead, auto_ack=True)
    finally:
        connection.close()
    assert method is not None, "nothing in the dead-letter queue"
    letter = json.loads(body)
    assert letter["reason"].startswith("not JSON")
    assert letter["message"] == "{this is not json"
    assert properties.headers["x-synthdetect-reason"] == letter["reason"]


def test_good_missing_and_corrupt_images_end_partial(
    worker: WorkerProcess, app: Celery, dataset: Dataset, receiver: CallbackReceiver, tmp_path: Path
) -> None:
    storage = Storage.from_settings(worker.settings)
    good = next(uri for uri in sorted(dataset.images) if dataset.labels[uri] != ABSTAINED)
    truncated = f"s3://{dataset.bucket}/bad/truncated.jpg"
    garbage = f"s3://{dataset.bucket}/bad/garbage.jpg"
    missing = f"s3://{dataset.bucket}/bad/missing.jpg"
    photo = f"s3://{dataset.bucket}/bad/photo.jpg"
    storage.put_bytes(truncated, dataset.images[good][:300])
    storage.put_bytes(photo, phone_photo())
    storage.put_bytes(garbage, b"definitely not an image" * 10)
    job = ClassifyJob.model_validate(
        {
            "job_id": new_job_id("mixed"),
            "inputs": {"kind": "uris", "uris": [good, missing, truncated, garbage, photo]},
            "output": {"uri": f"s3://{dataset.bucket}/results/mixed"},
            "callback": {"url": receiver.plan("/mixed")},
        }
    )
    submit_job(job, worker.settings, app)
    body = wait_for_callback(receiver, job.job_id, timeout_s=120).body
    assert body["status"] == "partial"
    by_uri = {r["uri"]: r for r in body["results"]}
    assert by_uri[good]["label"] == dataset.labels[good]
    assert by_uri[missing]["error"]["code"] == ErrorCode.NOT_FOUND
    assert by_uri[truncated]["error"]["code"] == ErrorCode.CORRUPT_IMAGE
    assert by_uri[garbage]["error"]["code"] == ErrorCode.UNSUPPORTED_FORMAT
    # the default model abstains on a photo far outside its 32x32 training images
    assert by_uri[photo].get("label") is None  # results omit null fields
    assert by_uri[photo]["error"]["code"] == ErrorCode.OUT_OF_DOMAIN
    assert by_uri[photo]["domain"]["in_domain"] is False
    assert "far outside the training sizes 32x32" in by_uri[photo]["domain"]["reason"]
    assert set(by_uri[photo]["scores"]) == {"real", "synthetic"}
    assert by_uri[good]["domain"]["in_domain"] is True
    assert body["counts"]["by_error"] == {
        "corrupt_image": 1,
        "not_found": 1,
        "out_of_domain": 1,
        "unsupported_format": 1,
    }
    assert body["counts"]["out_of_domain"] == 1


def test_a_job_whose_manifest_does_not_exist_is_answered_failed_not_dropped(
    worker: WorkerProcess, dataset: Dataset, receiver: CallbackReceiver, storage: Storage
) -> None:
    """A missing input is a permanent storage error: the producer hears of it."""
    job_id = new_job_id("no-manifest")
    output = f"s3://{dataset.bucket}/results/no-manifest"
    manifest = f"s3://{dataset.bucket}/manifests/{job_id}.csv"
    body = {
        "job_id": job_id,
        "inputs": {"kind": "manifest", "manifest": manifest},
        "output": {"uri": output},
        "callback": {"url": receiver.plan("/no-manifest")},
    }
    publish_plain(QueueNames.from_settings(worker.settings).jobs, json.dumps(body).encode())
    delivery = wait_for_callback(receiver, job_id, timeout_s=60)
    assert_delivered_once(receiver, job_id)
    assert delivery.body["status"] == "failed"
    assert delivery.body["counts"]["total"] == 0
    (failure,) = delivery.body["failed_shards"]
    assert failure["code"] == "not_found"
    assert failure["inputs"] == f"manifest {manifest} (not read)"
    summary, _ = job_results(storage, output, job_id)
    assert summary.status == "failed"
