"""Storage failing under a job: shards retry or give up, and the job is still answered once.

The flow of ``test_runner`` (in-memory storage, the bundled model, a list for a
broker, ``httpx.MockTransport`` for the receiver), with a store that can go down.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from typing import BinaryIO

import httpx
import pytest
from pydantic import SecretStr

from contracts import ErrorCode
from tests.support.memory_store import MemoryStore
from tests.unit.classify.test_runner import SAMPLE, SECRET, Broker, make_job
from worker.classify import owed
from worker.classify import runner as jobs
from worker.classify.results import JobLayout, read_summary
from worker.errors import StorageError
from worker.inference.engine import InferenceEngine
from worker.settings import Settings
from worker.storage import ObjectInfo, Storage
from worker.webhooks.attempts import CallbackTarget, read_delivery

LOCAL = lambda host, port: ["127.0.0.1"]  # noqa: E731
OUT = "s3://out/res"


class FlakyStore(MemoryStore):
    """A ``MemoryStore`` that fails like an unreachable S3 for addresses starting with ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = ""

    def _check(self, uri: str) -> None:
        if self.down and uri.startswith(self.down):
            raise StorageError("cannot reach 127.0.0.1:1: connection refused")

    def get_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        self._check(uri)
        return super().get_bytes(uri, max_bytes)

    def open_stream(self, uri: str, start: int = 0, end: int | None = None) -> BinaryIO:
        self._check(uri)
        return super().open_stream(uri, start, end)

    def put_bytes(self, uri: str, data: bytes, content_type: str = "") -> None:
        self._check(uri)
        super().put_bytes(uri, data)

    def put_if_absent(self, uri: str, data: bytes, content_type: str = "") -> bool:
        self._check(uri)
        return super().put_if_absent(uri, data)

    def list_objects(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        self._check(prefix_uri)
        return super().list_objects(prefix_uri)

    def exists(self, uri: str) -> bool:
        self._check(uri)
        return super().exists(uri)


@pytest.fixture
def remote() -> FlakyStore:
    store = FlakyStore()
    for path in sorted(SAMPLE.glob("*/*.jpg"))[:5]:
        store.objects[f"s3://inp/{path.parent.name}/{path.name}"] = path.read_bytes()
    return store


@pytest.fixture(scope="module")
def engine() -> Iterator[InferenceEngine]:
    engine = InferenceEngine.from_settings(
        Settings(device="cpu", max_wait_ms=1), Storage(MemoryStore)
    )
    yield engine
    engine.close()


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def services(remote: FlakyStore, engine: InferenceEngine, broker: Broker) -> jobs.JobServices:
    settings = Settings(
        shard_size=2, webhook_secret=SecretStr(SECRET), callback_allowlist=["127.0.0.1"]
    )
    return jobs.JobServices(
        settings=settings,
        storage=Storage(lambda: remote),
        engine=lambda: engine,
        enqueue_shard=broker.enqueue_shard,
        enqueue_delivery=broker.enqueue_delivery,
    )


def layout(job_id: str = "job-1") -> JobLayout:
    return JobLayout.of(OUT, job_id)


def test_an_unreadable_image_makes_its_shard_retry_without_writing(
    services: jobs.JobServices, broker: Broker, remote: FlakyStore
) -> None:
    jobs.accept_job(make_job(), services)
    remote.down = "s3://inp/"
    with pytest.raises(jobs.ShardStorageFailure) as failure:
        jobs.run_shard(broker.shards[0], services)
    assert failure.value.transient
    assert failure.value.code == "storage_unavailable"
    remote.down = ""
    assert not remote.exists(layout().done(0))
    # the retry, storage back, records the shard as usual
    jobs.run_shard(broker.shards[0], services)
    assert remote.exists(layout().done(0))


def test_a_shard_that_gives_up_lists_its_images_and_the_job_finishes_once(
    services: jobs.JobServices, broker: Broker, remote: FlakyStore
) -> None:
    jobs.accept_job(make_job(), services)
    first, second, last = broker.shards
    jobs.run_shard(first, services)
    jobs.run_shard(second, services)
    remote.down = "s3://inp/"
    with pytest.raises(jobs.ShardStorageFailure) as failure:
        jobs.run_shard(last, services)
    remote.down = ""
    reason = str(failure.value)
    jobs.give_up_shard(last, services, "storage_unavailable", reason, failure.value.results)

    summary = read_summary(services.storage, layout())
    assert summary is not None
    assert summary.status == "partial"
    assert summary.counts.total == 5
    assert last.items is not None
    assert summary.counts.by_error == {ErrorCode.STORAGE_UNAVAILABLE: len(last.items)}
    assert summary.failed_shards is not None
    assert [(f.index, f.code, f.images_unlisted) for f in summary.failed_shards] == [
        (2, ErrorCode.STORAGE_UNAVAILABLE, False)
    ]
    assert broker.deliveries == [("job-1", OUT, 0.0)]
    part = remote.objects[layout().part(2)].decode().splitlines()
    assert {json.loads(line)["uri"] for line in part} == {item.uri for item in last.items}
    # a duplicate give-up (or the shard's redelivery) neither rewrites nor re-finalises;
    # it only makes sure of the callback (still owed here), which the attempt claim dedupes
    written = remote.objects[layout().summary], remote.objects[layout().part(2)]
    jobs.give_up_shard(last, services, "storage_unavailable", reason, None)
    jobs.run_shard(last, services)
    assert (remote.objects[layout().summary], remote.objects[layout().part(2)]) == written
    assert set(broker.deliveries) == {("job-1", OUT, 0.0)}


def test_every_shard_given_up_fails_the_job(
    services: jobs.JobServices, broker: Broker, remote: FlakyStore
) -> None:
    jobs.accept_job(make_job(), services)
    for shard in broker.shards:
        jobs.give_up_shard(shard, services, "forbidden", "access denied: inp")
    summary = read_summary(services.storage, layout())
    assert summary is not None
    assert summary.status == "failed"
    assert summary.counts.by_error == {ErrorCode.FORBIDDEN: 5}
    assert len(broker.deliveries) == 1


def test_a_job_whose_prefix_cannot_be_listed_fails_and_says_what_is_missing(
    services: jobs.JobServices, broker: Broker, remote: FlakyStore
) -> None:
    remote.down = "s3://"
    with pytest.raises(StorageError):
        jobs.accept_job(make_job(), services)
    remote.down = ""
    jobs.give_up_job(make_job(), services, "storage_unavailable", "listing s3://inp/ failed")
    summary = read_summary(services.storage, layout())
    assert summary is not None
    assert summary.status == "failed"
    assert summary.counts.total == 0
    assert summary.failed_shards is not None
    failed = summary.failed_shards[0]
    assert failed.images_unlisted
    assert failed.inputs == "prefix s3://inp/ (not listed)"
    assert "listing s3://inp/ failed" in (summary.error or "")
    assert broker.deliveries == [("job-1", OUT, 0.0)]


def test_a_uri_list_job_that_gives_up_lists_every_uri(
    services: jobs.JobServices, broker: Broker, remote: FlakyStore
) -> None:
    uris = sorted(remote.objects)[:3]
    job = make_job(inputs={"kind": "uris", "uris": uris})
    jobs.give_up_job(job, services, "storage_rejected", "InvalidBucketName (HTTP 400)")
    summary = read_summary(services.storage, layout())
    assert summary is not None
    assert summary.counts.by_error == {ErrorCode.STORAGE_REJECTED: 3}
    assert summary.failed_shards is not None
    assert not summary.failed_shards[0].images_unlisted


def test_the_sweeper_queues_an_owed_callback_and_forgets_it_once_delivered(
    services: jobs.JobServices, broker: Broker, remote: FlakyStore
) -> None:
    jobs.accept_job(make_job(), services)
    for shard in list(broker.shards):
        jobs.run_shard(shard, services)
    broker.deliveries.clear()  # as if the publish after the summary was lost
    roots = owed.sweep_roots(["out"])
    assert remote.exists(layout().pending)
    assert owed.sweep(services.storage, roots, broker.enqueue_delivery, grace_s=60) == 0
    later = time.time() + 61
    assert owed.sweep(services.storage, roots, broker.enqueue_delivery, 60, later) == 1
    assert broker.deliveries == [("job-1", OUT, 0.0)]

    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(204)))
    record = jobs.deliver("job-1", OUT, services, client, LOCAL)
    assert record is not None
    assert record.state == "delivered"
    assert not remote.exists(layout().pending)
    assert owed.sweep(services.storage, roots, broker.enqueue_delivery, 0, later) == 0


def test_an_attempt_claimed_by_another_sender_is_not_sent_again(
    services: jobs.JobServices, broker: Broker, remote: FlakyStore
) -> None:
    jobs.accept_job(make_job(), services)
    for shard in list(broker.shards):
        jobs.run_shard(shard, services)
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    client = httpx.Client(transport=httpx.MockTransport(handle))
    claim = layout().delivery_claims + "attempt-00001.claim"
    other = {"sender": "other", "token": "t", "at": time.time()}
    remote.objects[claim] = json.dumps(other).encode()
    jobs.deliver("job-1", OUT, services, client, LOCAL)
    assert sent == []  # the other sender holds attempt 1
    # the other sender died long ago without recording its attempt: it is lost, not repeated
    remote.objects[claim] = json.dumps({**other, "at": time.time() - 3600}).encode()
    record = jobs.deliver("job-1", OUT, services, client, LOCAL)
    assert record is not None
    assert [(a.attempt, a.outcome) for a in record.attempts] == [(1, "lost"), (2, "delivered")]
    assert len(sent) == 1
    target = CallbackTarget("job-1", make_job().callback, layout().delivery, "")  # type: ignore[arg-type]
    stored = read_delivery(services.storage, target.record_uri)
    assert stored is not None
    assert stored.state == "delivered"


def test_a_tar_slice_that_gives_up_names_the_bytes_it_could_not_read(
    services: jobs.JobServices, broker: Broker, remote: FlakyStore
) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for uri in sorted(remote.objects)[:5]:
            data = remote.objects[uri]
            member = tarfile.TarInfo(uri.rsplit("/", 1)[-1])
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    remote.objects["s3://inp/set.tar"] = archive.getvalue()
    jobs.accept_job(make_job(inputs={"kind": "tar", "tar": "s3://inp/set.tar"}), services)
    first, *others = broker.shards
    for shard in others:
        jobs.run_shard(shard, services)
    remote.down = "s3://inp/set.tar"
    with pytest.raises(jobs.ShardStorageFailure) as failure:
        jobs.run_shard(first, services)
    remote.down = ""
    jobs.give_up_shard(first, services, failure.value.code, str(failure.value), [])
    summary = read_summary(services.storage, layout())
    assert summary is not None
    assert summary.status == "partial"
    assert summary.counts.total == 3  # the two members of the unread slice are in no count
    assert summary.failed_shards is not None
    failed = summary.failed_shards[0]
    assert failed.images_unlisted
    assert first.tar_slice is not None
    assert (
        failed.inputs == f"s3://inp/set.tar bytes [{first.tar_slice.start}, {first.tar_slice.end})"
    )
