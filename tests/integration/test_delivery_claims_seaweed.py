"""Two senders racing on one job's callback, against a real SeaweedFS: one POST per attempt.

Each round finishes a job (record + summary in a fresh folder), then two threads
(or two processes) start ``deliver`` for it at the same instant, as a duplicated
callback message, a redelivery and the sweeper would. The conditional write on
the attempt claim must let exactly one of them post, and ``delivery.json`` must
record exactly the attempts that were posted.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from contracts import ClassifyJob, Counts
from worker.classify import runner as jobs
from worker.classify.results import (
    JobLayout,
    JobRecord,
    ShardDone,
    assemble_summary,
    write_job_record,
)
from worker.settings import Settings
from worker.storage import Storage

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROUNDS = 12


def finished_job(storage: Storage, output: str, job_id: str) -> None:
    job = ClassifyJob.model_validate(
        {
            "job_id": job_id,
            "inputs": {"kind": "uris", "uris": ["s3://inputs/a.jpg"]},
            "output": {"uri": output},
            "callback": {"url": "http://127.0.0.1:9/hook"},
        }
    )
    layout = JobLayout.of(output, job_id)
    now = datetime.now(UTC)
    record = JobRecord(job=job, shards=1, accepted_at=now)
    write_job_record(storage, layout, record)
    storage.put_bytes(layout.part(0), b"")
    marker = ShardDone(index=0, counts=Counts(total=0), models=[], started_at=now, finished_at=now)
    summary = assemble_summary([marker], record, layout)
    storage.put_bytes(layout.summary, summary.model_dump_json().encode())


def services(settings: Settings) -> jobs.JobServices:
    def no_engine() -> None:
        raise AssertionError("delivery needs no model")

    return jobs.JobServices(
        settings=settings.model_copy(
            update={"webhook_secret": SecretStr(SECRET), "callback_allowlist": ["127.0.0.1"]}
        ),
        storage=Storage.from_settings(settings),
        engine=no_engine,  # type: ignore[arg-type]
        enqueue_shard=lambda shard: None,
        enqueue_delivery=lambda job_id, output, delay: None,
    )


def slow_receiver(posts: list[str]) -> httpx.Client:
    """A receiver that takes 50 ms to answer 200, so racing senders overlap."""

    def handle(request: httpx.Request) -> httpx.Response:
        posts.append(request.headers["webhook-id"])
        time.sleep(0.05)
        return httpx.Response(200)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_two_threads_racing_post_once_per_job(s3_settings: Settings, s3_bucket: str) -> None:
    storage = Storage.from_settings(s3_settings)
    output = f"s3://{s3_bucket}/results"
    posts: list[str] = []
    client = slow_receiver(posts)
    local = lambda host, port: ["127.0.0.1"]  # noqa: E731
    for round_ in range(ROUNDS):
        job_id = f"race-{round_}"
        finished_job(storage, output, job_id)
        start = threading.Barrier(2)

        def send(job_id: str = job_id, start: threading.Barrier = start) -> None:
            start.wait()
            jobs.deliver(job_id, output, services(s3_settings), client, local)

        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        record = jobs.read_delivery_record(storage, output, job_id)
        assert record is not None
        assert record.state == "delivered"
        assert [a.attempt for a in record.attempts] == [1]
    assert sorted(posts) == sorted(f"race-{r}" for r in range(ROUNDS))


def _deliver_in_process(settings_json: str, output: str, job_id: str, at: float) -> int:
    """One sender in its own process, starting at the wall-clock instant ``at``."""
    settings = Settings.model_validate_json(settings_json)
    posts: list[str] = []
    client = slow_receiver(posts)
    time.sleep(max(at - time.time(), 0.0))
    jobs.deliver(job_id, output, services(settings), client, lambda host, port: ["127.0.0.1"])
    return len(posts)


def test_two_processes_racing_post_once_per_job(s3_settings: Settings, s3_bucket: str) -> None:
    storage = Storage.from_settings(s3_settings)
    output = f"s3://{s3_bucket}/processes"
    # spawn, not fork: a forked child of a process with obstore's runtime threads can hang
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(abs, [1, 2]))  # both started before the race
        for round_ in range(ROUNDS // 2):
            job_id = f"procs-{round_}"
            finished_job(storage, output, job_id)
            at = time.time() + 1.0
            futures = [
                pool.submit(_deliver_in_process, s3_settings.model_dump_json(), output, job_id, at)
                for _ in range(2)
            ]
            assert sum(f.result(60) for f in futures) == 1
            record = jobs.read_delivery_record(storage, output, job_id)
            assert record is not None
            assert [(a.attempt, a.outcome) for a in record.attempts] == [(1, "delivered")]
