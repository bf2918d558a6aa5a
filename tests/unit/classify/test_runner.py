"""The worker's flow without a broker: accept -> shards -> summary -> callback.

Storage is in memory, the model is the bundled one, the broker is two lists,
the webhook receiver is an ``httpx.MockTransport``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook

from contracts import ClassifyJob, ClassifyShard, ErrorCode
from tests.support.memory_store import MemoryStore
from worker.classify import runner as jobs
from worker.classify.results import JobLayout, read_summary
from worker.errors import JobRejected
from worker.inference.engine import InferenceEngine
from worker.settings import Settings
from worker.storage import Storage

SAMPLE = Path(__file__).parents[2] / "data" / "cifake-sample"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="module")
def engine() -> Iterator[InferenceEngine]:
    engine = InferenceEngine.from_settings(
        Settings(device="cpu", max_wait_ms=1), Storage(MemoryStore)
    )
    yield engine
    engine.close()


class Broker:
    """Records what the job functions enqueue."""

    def __init__(self) -> None:
        self.shards: list[ClassifyShard] = []
        self.deliveries: list[tuple[str, str, float]] = []

    def enqueue_shard(self, shard: ClassifyShard) -> None:
        self.shards.append(shard)

    def enqueue_delivery(self, job_id: str, output_uri: str, delay: float) -> None:
        self.deliveries.append((job_id, output_uri, delay))


@pytest.fixture
def remote() -> MemoryStore:
    store = MemoryStore()
    for path in sorted(SAMPLE.glob("*/*.jpg"))[:5]:
        store.objects[f"s3://inp/{path.parent.name}/{path.name}"] = path.read_bytes()
    return store


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def services(remote: MemoryStore, engine: InferenceEngine, broker: Broker) -> jobs.JobServices:
    settings = Settings(
        shard_size=2,
        webhook_secret=SecretStr(SECRET),
        callback_allowlist=["127.0.0.1"],
        callback_backoff_base_s=1,
    )
    return jobs.JobServices(
        settings=settings,
        storage=Storage(lambda: remote),
        engine=lambda: engine,
        enqueue_shard=broker.enqueue_shard,
        enqueue_delivery=broker.enqueue_delivery,
    )


def make_job(job_id: str = "job-1", **extra: object) -> ClassifyJob:
    return ClassifyJob.model_validate(
        {
            "job_id": job_id,
            "inputs": {"kind": "prefix", "prefix": "s3://inp/"},
            "output": {"uri": "s3://out/res"},
            "callback": {"url": "http://127.0.0.1:9/hook"},
            **extra,
        }
    )


def run_all(services: jobs.JobServices, broker: Broker) -> None:
    while broker.shards:
        jobs.run_shard(broker.shards.pop(0), services)


def test_a_split_job_finishes_once_with_one_callback(
    services: jobs.JobServices, broker: Broker, remote: MemoryStore
) -> None:
    jobs.accept_job(make_job(), services)
    assert [s.index for s in broker.shards] == [0, 1, 2]
    shards = list(broker.shards)
    run_all(services, broker)
    layout = JobLayout.of("s3://out/res", "job-1")
    summary = read_summary(services.storage, layout)
    assert summary is not None
    assert summary.status == "succeeded"
    assert summary.counts.total == 5
    assert broker.deliveries == [("job-1", "s3://out/res", 0.0)]
    # a redelivered shard neither re-runs nor finishes the job a second time
    jobs.run_shard(shards[0], services)
    assert broker.deliveries == [("job-1", "s3://out/res", 0.0)]
    assert sum(remote.objects[layout.part(i)].count(b"\n") for i in range(3)) == 5


def test_a_single_shard_job_runs_inline(
    services: jobs.JobServices, broker: Broker, remote: MemoryStore
) -> None:
    uris = ["s3://inp/missing.jpg", next(iter(remote.objects))]
    jobs.accept_job(make_job(inputs={"kind": "uris", "uris": uris}), services)
    assert broker.shards == []
    summary = read_summary(services.storage, JobLayout.of("s3://out/res", "job-1"))
    assert summary is not None
    assert summary.status == "partial"
    assert summary.counts.by_error == {ErrorCode.NOT_FOUND: 1}


def test_the_callback_is_signed_and_retried_on_schedule(
    services: jobs.JobServices, broker: Broker
) -> None:
    jobs.accept_job(make_job(inputs={"kind": "uris", "uris": ["s3://inp/missing.jpg"]}), services)
    answers = [503, 200]
    received: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(answers.pop(0))

    client = httpx.Client(transport=httpx.MockTransport(handle))
    local = lambda host, port: ["127.0.0.1"]  # noqa: E731
    first = jobs.deliver("job-1", "s3://out/res", services, client, local)
    assert first is not None
    assert first.state == "pending"
    assert broker.deliveries[-1][2] > 0  # the next attempt is scheduled, not slept for
    second = jobs.deliver("job-1", "s3://out/res", services, client, local)
    assert second is not None
    assert second.state == "delivered"
    assert [a.attempt for a in second.attempts] == [1, 2]
    assert {r.headers["webhook-id"] for r in received} == {"job-1"}
    body = Webhook(SECRET).verify(received[-1].content, dict(received[-1].headers))
    assert body["status"] == "failed"
    assert body["results"][0]["error"]["code"] == "not_found"
    # a duplicate delivery task after success does nothing
    assert jobs.deliver("job-1", "s3://out/res", services, client, local) == second
    assert len(received) == 2
    stored = json.loads(services.storage.get_bytes("s3://out/res/job-1/delivery.json"))
    assert stored["state"] == "delivered"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"model": {"name": "no-such-model"}}, "unknown model"),
        ({"callback": {"url": "http://127.0.0.1/h", "secret_ref": "other"}}, "secret_ref"),
    ],
)
def test_jobs_that_can_never_succeed_are_rejected(
    services: jobs.JobServices, change: dict[str, object], reason: str
) -> None:
    with pytest.raises(JobRejected, match=reason):
        jobs.accept_job(make_job(**change), services)


def test_a_reused_job_id_is_rejected(services: jobs.JobServices, broker: Broker) -> None:
    jobs.accept_job(make_job(), services)
    with pytest.raises(JobRejected, match="already used"):
        jobs.accept_job(make_job(priority="bulk"), services)


def test_a_redelivered_job_resumes(services: jobs.JobServices, broker: Broker) -> None:
    jobs.accept_job(make_job(), services)
    jobs.run_shard(broker.shards[1], services)
    broker.shards.clear()
    jobs.accept_job(make_job(), services)
    assert [s.index for s in broker.shards] == [0, 2]
    run_all(services, broker)
    jobs.accept_job(make_job(), services)  # finished: only makes sure of the callback
    assert broker.shards == []
    assert len(broker.deliveries) == 2


def test_a_first_seen_one_shard_job_calls_back_from_its_own_task(
    services: jobs.JobServices, broker: Broker, remote: MemoryStore
) -> None:
    received: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    client = httpx.Client(transport=httpx.MockTransport(handle))
    fast = jobs.JobServices(**{**services.__dict__, "client": lambda: client})
    uri = sorted(remote.objects)[0]
    job = make_job("one", inputs={"kind": "uris", "uris": [uri]})
    jobs.accept_job(job, fast)
    assert broker.deliveries == []  # no hop through the callbacks queue
    assert len(received) == 1
    body = Webhook(SECRET).verify(received[0].content, dict(received[0].headers))
    assert body["status"] == "succeeded"
    assert [r["uri"] for r in body["results"]] == [uri]
    layout = JobLayout.of("s3://out/res", "one")
    written = {layout.job, layout.part(0), layout.done(0), layout.summary, layout.delivery}
    assert written <= set(remote.objects)
    # nothing it wrote was read back: only the image, and the checks for earlier attempts
    assert set(remote.reads) == {uri, layout.job, layout.summary, layout.delivery}
    stored = json.loads(remote.objects[layout.delivery])
    assert stored["state"] == "delivered"
    # a redelivery of the same message changes nothing and sends nothing more
    jobs.accept_job(job, fast)
    assert len(received) == 1
