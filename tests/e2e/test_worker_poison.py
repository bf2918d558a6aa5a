"""Real workers on RabbitMQ: clean starts, poison on every queue, hostile URIs and tar members.

Every message here is published the way a producer in another language would
(pika, a bare body), and every rejection is read back from ``<prefix>-dead``
with its reason. Each module worker runs on a fresh prefix with a unique node
name (``start_worker``), so the shared broker never sees a duplicate pidbox.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from contracts import ErrorCode
from tests.e2e.checks import job_results, wait_for_callback
from tests.e2e.conftest import (
    SAMPLE,
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
from tests.support.waiting import wait_until
from worker.queue.deadletter import REASON_HEADER
from worker.queue.topology import TASK_RETRAIN, QueueNames
from worker.settings import Settings
from worker.storage import S3Store, Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ERROR_LINE = re.compile(
    r'"level": "(error|critical)"|Failed to bind|NOT_FOUND|delayed delivery will not be available'
    r"|Retrying delayed delivery|Traceback|RESOURCE_LOCKED",
    re.IGNORECASE,
)
"""What a clean start never logs."""


@pytest.fixture(scope="module")
def worker(e2e_s3: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A default worker (no -Q) on a fresh prefix."""
    require_rabbitmq()
    settings = worker_settings(
        e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("poison")
    )
    log_path = tmp_path_factory.mktemp("poison-worker") / "worker.log"
    process = start_worker([executable("synthdetect"), "worker"], settings, log_path)
    yield process
    process.stop()
    delete_amqp_topology(settings)


@pytest.fixture(scope="module")
def bucket(e2e_s3: Settings) -> str:
    name = f"poison-{uuid.uuid4().hex[:10]}"
    S3Store.from_settings(e2e_s3).client.create_bucket(Bucket=name)
    return name


def publish(queue: str, body: bytes, **properties: Any) -> None:
    """One AMQP publish to the default exchange, as any producer does."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        props = pika.BasicProperties(delivery_mode=2, **properties)
        connection.channel().basic_publish(
            exchange="", routing_key=queue, body=body, properties=props
        )
    finally:
        connection.close()


def take_letters(queue: str, count: int, timeout_s: float = 60) -> list[tuple[dict[str, Any], Any]]:
    """The next ``count`` dead letters of ``queue`` (envelope, AMQP properties)."""
    letters: list[tuple[dict[str, Any], Any]] = []
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        channel = connection.channel()

        def one_more() -> bool:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is not None:
                letters.append((json.loads(body), properties))
            return len(letters) >= count

        wait_until(one_more, timeout_s, f"{count} dead letters in {queue}", interval_s=0.2)
    finally:
        connection.close()
    return letters


def consumers(queue: str) -> int:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.consumer_count)
    finally:
        connection.close()


def error_lines(worker: WorkerProcess) -> list[str]:
    text = worker.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if ERROR_LINE.search(line)]


STARTS = int(os.environ.get("E2E_WORKER_STARTS", "1"))
"""How many fresh starts to check: ``E2E_WORKER_STARTS=10`` for the issue's
"10 consecutive starts" (before the fix, 4 of 10 logged ``Failed to bind queue``)."""


@pytest.mark.parametrize("start", range(STARTS))
def test_a_start_on_a_fresh_prefix_logs_no_error(
    start: int, e2e_s3: Settings, tmp_path: Path
) -> None:
    require_rabbitmq()
    prefix = unique_prefix(f"start{start}")
    settings = worker_settings(e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=prefix)
    worker = start_worker([executable("synthdetect"), "worker"], settings, tmp_path / "w.log")
    try:
        [ready] = worker.events("worker_ready")
        assert ready["queues"] == sorted(QueueNames.from_settings(settings).default_consumed)
        assert consumers(f"{prefix}-retrain-jobs") == 1
    finally:
        worker.stop()
        delete_amqp_topology(settings)
    assert error_lines(worker) == [], worker.log_tail()


def test_poison_on_a_celery_task_queue_is_dead_lettered_with_its_reason(
    worker: WorkerProcess,
) -> None:
    names = QueueNames.from_settings(worker.settings)
    task = {"task": "synthdetect.accept_job", "id": str(uuid.uuid4())}
    publish(names.classify, b"\x00\xff not json", content_type="application/json", headers=task)
    pickled = b"\x80\x04K\x01."
    publish(names.classify, pickled, content_type="application/x-python-serialize", headers=task)
    publish(names.classify, b'{"job_id": "plain-on-a-task-queue"}', content_type="application/json")
    publish(
        names.bulk,
        json.dumps([[{"job_id": "j"}], {}, {}]).encode(),
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": "no.such.task", "id": str(uuid.uuid4())},
    )
    letters = take_letters(names.dead, 4)
    reasons = sorted(letter["reason"] for letter, _ in letters)
    assert [r.split(":")[0] for r in reasons] == [
        "not a task message",
        "undecodable body",
        "unknown task 'no.such.task'",
        "wrong content type",
    ], reasons
    assert all(props.headers[REASON_HEADER] == letter["reason"] for letter, props in letters)
    sources = {letter["reason"].split(":")[0]: letter["source_queue"] for letter, _ in letters}
    assert sources["unknown task 'no.such.task'"] == names.bulk
    assert sources["not a task message"] == names.classify
    assert error_lines(worker) == []  # dead-lettered, not logged at CRITICAL and dropped


def test_a_traversing_output_uri_sent_as_plain_json_is_dead_lettered(worker: WorkerProcess) -> None:
    names = QueueNames.from_settings(worker.settings)
    job = {
        "job_id": "traversal-1",
        "inputs": {"kind": "uris", "uris": ["s3://images/a.jpg"]},
        "output": {"uri": "s3://results/tenant-a/../../other/x"},
    }
    publish(names.jobs, json.dumps(job).encode(), content_type="application/json")
    [(letter, props)] = take_letters(names.dead, 1)
    assert letter["reason"] == (
        "schema violation: output.uri: Value error, "
        "a '..' segment in the key is not allowed (no relative paths)"
    )
    assert letter["job_id"] == "traversal-1"
    assert letter["source_queue"] == names.jobs
    assert props.headers[REASON_HEADER] == letter["reason"]


def test_retrain_jobs_sent_as_plain_json_reach_the_retrain_queue_or_the_dead_letters(
    worker: WorkerProcess,
) -> None:
    names = QueueNames.from_settings(worker.settings)
    good = {"job_id": "retrain-json-1", "dataset": {"kind": "prefix", "prefix": "s3://data/x/"}}
    publish(names.retrain_jobs, json.dumps(good).encode(), content_type="application/json")
    publish(names.retrain_jobs, json.dumps({**good, "cv_folds": 1}).encode())
    [(letter, _)] = take_letters(names.dead, 1)
    assert letter["reason"].startswith("schema violation: cv_folds:")
    assert letter["source_queue"] == names.retrain_jobs
    # No retrain worker runs on this prefix: the forwarded task waits in <prefix>-retrain.
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        channel = connection.channel()
        _, properties, body = wait_until(
            lambda: (found := channel.basic_get(names.retrain, auto_ack=True))[0] and found,
            30,
            "the forwarded retrain task",
        )
    finally:
        connection.close()
    assert properties.headers["task"] == TASK_RETRAIN
    [args, _kwargs, _embed] = json.loads(body)
    assert args[0]["job_id"] == "retrain-json-1"


def test_every_tar_member_gets_a_row(
    worker: WorkerProcess, bucket: str, receiver: CallbackReceiver
) -> None:
    image = sorted(SAMPLE.glob("*/*.jpg"))[0].read_bytes()  # a CIFAKE image: in the domain
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo("photos")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        info = tarfile.TarInfo("photos/a.jpg")
        info.size = len(image)
        tar.addfile(info, io.BytesIO(image))
        for name, kind, target in [
            ("photos/evil.png", tarfile.SYMTYPE, "/etc/passwd"),
            ("photos/copy.png", tarfile.LNKTYPE, "photos/a.jpg"),
            ("photos/pipe.png", tarfile.FIFOTYPE, ""),
            ("photos/dev.png", tarfile.CHRTYPE, ""),
        ]:
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, target
            tar.addfile(member)
    storage = Storage.from_settings(worker.settings)
    storage.put_bytes(f"s3://{bucket}/in/members.tar", buffer.getvalue())
    job_id = f"members-{uuid.uuid4().hex[:6]}"
    output = f"s3://{bucket}/results"
    job = {
        "job_id": job_id,
        "inputs": {"kind": "tar", "tar": f"s3://{bucket}/in/members.tar"},
        "output": {"uri": output},
        "callback": {"url": receiver.plan(f"/{job_id}")},
    }
    names = QueueNames.from_settings(worker.settings)
    publish(names.jobs, json.dumps(job).encode(), content_type="application/json")
    body = wait_for_callback(receiver, job_id, timeout_s=120).body
    assert body["status"] == "partial"
    summary, results = job_results(storage, output, job_id)
    by_member = {r.uri.split("#", 1)[1]: r for r in results}
    assert sorted(by_member) == sorted(
        ["photos/a.jpg", "photos/evil.png", "photos/copy.png", "photos/pipe.png", "photos/dev.png"]
    )
    assert by_member["photos/a.jpg"].label is not None
    for name in ("photos/evil.png", "photos/copy.png", "photos/pipe.png", "photos/dev.png"):
        error = by_member[name].error
        assert error is not None, by_member[name]
        assert error.code == ErrorCode.UNSUPPORTED_MEMBER, by_member[name]
    assert summary.counts.by_error[ErrorCode.UNSUPPORTED_MEMBER] == 4


@pytest.fixture(scope="module")
def retrain_worker(
    e2e_s3: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker started with ``-Q <prefix>-retrain`` alone, on a prefix of its own."""
    require_rabbitmq()
    prefix = unique_prefix("retrain-only")
    settings = worker_settings(e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=prefix)
    log_path = tmp_path_factory.mktemp("retrain-only") / "worker.log"
    command = [executable("synthdetect"), "worker", "-Q", f"{prefix}-retrain"]
    process = start_worker(command, settings, log_path)
    yield process
    process.stop()
    delete_amqp_topology(settings)


def test_a_retrain_worker_consumes_only_the_retrain_queue(retrain_worker: WorkerProcess) -> None:
    names = QueueNames.from_settings(retrain_worker.settings)
    [ready] = retrain_worker.events("worker_ready")
    assert ready["queues"] == [names.retrain]
    assert consumers(names.retrain) == 1
    for queue in (names.jobs, names.retrain_jobs, names.classify, names.bulk, names.callbacks):
        assert consumers(queue) == 0, queue
    # The repro: a RetrainJob as plain JSON on the *task* queue gets a reason.
    job = {"job_id": "retrain-on-task-queue", "dataset": {"kind": "tar", "tar": "s3://d1/x.tar"}}
    publish(names.retrain, json.dumps(job).encode(), content_type="application/json")
    [(letter, props)] = take_letters(names.dead, 1)
    assert letter["reason"].startswith("not a task message")
    assert names.retrain_jobs in letter["reason"]
    assert letter["source_queue"] == names.retrain
    assert props.headers[REASON_HEADER] == letter["reason"]
    assert error_lines(retrain_worker) == []
