"""Results layout: idempotent parts, done markers, the finalise claim, summary assembly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts import ClassifyJob, ErrorCode, ImageError, ImageResult, ModelId
from tests.support.memory_store import MemoryStore
from worker.classify.results import (
    JobLayout,
    JobRecord,
    claim_finalize,
    done_shards,
    finalize_summary,
    read_results,
    write_shard_results,
)
from worker.storage import Storage

MODEL = ModelId(name="default", version="1")
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def remote() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def storage(remote: MemoryStore) -> Storage:
    return Storage(lambda: remote)


LAYOUT = JobLayout.of("s3://out/results/", "job-1")


def labelled(uri: str, label: str = "real") -> ImageResult:
    other = "synthetic" if label == "real" else "real"
    return ImageResult(
        uri=uri, label=label, confidence=0.8, scores={label: 0.8, other: 0.2}, model=MODEL
    )


def failed(uri: str, code: ErrorCode) -> ImageResult:
    return ImageResult(uri=uri, error=ImageError(code=code, message="x"))


def record(shards: int) -> JobRecord:
    job = ClassifyJob.model_validate(
        {
            "job_id": "job-1",
            "inputs": {"kind": "uris", "uris": ["s3://inp/a.jpg"]},
            "output": {"uri": "s3://out/results"},
        }
    )
    return JobRecord(job=job, shards=shards, accepted_at=T0)


def test_layout_addresses() -> None:
    assert LAYOUT.part(3) == "s3://out/results/job-1/parts/part-00003.jsonl"
    assert LAYOUT.done(3) == "s3://out/results/job-1/parts/part-00003.done.json"
    assert LAYOUT.summary == "s3://out/results/job-1/summary.json"
    assert LAYOUT.claim == "s3://out/results/job-1/finalize.claim"


def test_a_redelivered_shard_overwrites_its_part(storage: Storage, remote: MemoryStore) -> None:
    results = [labelled("s3://inp/a.jpg"), labelled("s3://inp/b.jpg", "synthetic")]
    write_shard_results(storage, LAYOUT, 0, results, T0)
    write_shard_results(storage, LAYOUT, 0, results, T0)
    lines = remote.objects[LAYOUT.part(0)].decode().splitlines()
    assert len(lines) == 2
    assert [r.uri for r in read_results(storage, LAYOUT, 1)] == ["s3://inp/a.jpg", "s3://inp/b.jpg"]


def test_done_shards_lists_markers(storage: Storage) -> None:
    assert done_shards(storage, LAYOUT) == set()
    write_shard_results(storage, LAYOUT, 2, [], T0)
    write_shard_results(storage, LAYOUT, 0, [], T0)
    assert done_shards(storage, LAYOUT) == {0, 2}


def test_exactly_one_shard_claims_and_it_may_claim_again(storage: Storage) -> None:
    assert claim_finalize(storage, LAYOUT, 1)
    assert not claim_finalize(storage, LAYOUT, 0)
    assert not claim_finalize(storage, LAYOUT, 2)
    assert claim_finalize(storage, LAYOUT, 1)  # its own redelivery


def test_summary_merges_shards(storage: Storage) -> None:
    write_shard_results(storage, LAYOUT, 0, [labelled("s3://a"), labelled("s3://b")], T0)
    write_shard_results(
        storage,
        LAYOUT,
        1,
        [labelled("s3://c", "synthetic"), failed("s3://d", ErrorCode.NOT_FOUND)],
        T0 + timedelta(seconds=1),
    )
    summary = finalize_summary(storage, LAYOUT, record(2))
    assert summary.status == "partial"
    assert summary.counts.total == 4
    assert summary.counts.by_label == {"real": 2, "synthetic": 1}
    assert summary.counts.by_error == {ErrorCode.NOT_FOUND: 1}
    assert summary.models == [MODEL]
    assert summary.parts == [LAYOUT.part(0), LAYOUT.part(1)]
    assert summary.timings.started_at == T0
    assert summary.summary_uri == LAYOUT.summary
    assert storage.exists(LAYOUT.summary)


@pytest.mark.parametrize(
    ("results", "shard_error", "status"),
    [
        ([labelled("s3://a")], None, "succeeded"),
        ([failed("s3://a", ErrorCode.CORRUPT_IMAGE)], None, "failed"),
        ([labelled("s3://a")], "not a readable tar", "partial"),
        ([], None, "failed"),
    ],
)
def test_summary_status(
    storage: Storage, results: list[ImageResult], shard_error: str | None, status: str
) -> None:
    write_shard_results(storage, LAYOUT, 0, results, T0, shard_error)
    summary = finalize_summary(storage, LAYOUT, record(1))
    assert summary.status == status
    if shard_error or not results:
        assert summary.error
