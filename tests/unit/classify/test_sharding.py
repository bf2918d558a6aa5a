"""Cutting jobs into shards: item lists, prefixes, manifests and tar byte ranges."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from contracts import ClassifyJob
from tests.support.memory_store import MemoryStore
from worker.classify.inputs import iter_tar_items
from worker.classify.sharding import plan_shards
from worker.errors import JobRejected, ObjectNotFound
from worker.storage import Storage


@pytest.fixture
def remote() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def storage(remote: MemoryStore) -> Storage:
    return Storage(lambda: remote)


def job(inputs: dict[str, object], **extra: object) -> ClassifyJob:
    return ClassifyJob.model_validate(
        {"job_id": "j1", "inputs": inputs, "output": {"uri": "s3://out/r"}, **extra}
    )


def make_tar(names: list[str], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:
        for name in names:
            data = name.encode() * 3
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_uri_lists_are_cut_in_order_with_known_labels(storage: Storage) -> None:
    uris = [f"s3://inp/{i}.jpg" for i in range(7)]
    shards = plan_shards(
        job({"kind": "uris", "uris": uris}, labels={uris[3]: "real"}), storage, 3, 100
    )
    assert [s.index for s in shards] == [0, 1, 2]
    assert {s.count for s in shards} == {3}
    assert [[i.uri for i in s.items or []] for s in shards] == [uris[0:3], uris[3:6], uris[6:]]
    assert shards[1].items is not None
    assert shards[1].items[0].label == "real"
    assert shards[0].output.uri == "s3://out/r"


def test_a_prefix_is_listed_once(storage: Storage, remote: MemoryStore) -> None:
    for i in range(5):
        remote.objects[f"s3://inp/p/{i}.jpg"] = b"x"
    remote.objects["s3://inp/other/9.jpg"] = b"x"
    shards = plan_shards(job({"kind": "prefix", "prefix": "s3://inp/p/"}), storage, 2, 100)
    assert sum(len(s.items or []) for s in shards) == 5
    assert len(shards) == 3


def test_manifest_labels_are_kept(storage: Storage, remote: MemoryStore) -> None:
    rows = [{"uri": f"s3://inp/{i}.jpg", "label": "synthetic"} for i in range(3)]
    remote.objects["s3://inp/m.jsonl"] = "\n".join(json.dumps(r) for r in rows).encode()
    (shard,) = plan_shards(job({"kind": "manifest", "manifest": "s3://inp/m.jsonl"}), storage, 5, 9)
    assert [(i.uri, i.label) for i in shard.items or []] == [(r["uri"], r["label"]) for r in rows]


def test_tar_slices_cover_every_member_once(storage: Storage, remote: MemoryStore) -> None:
    names = [f"REAL/{i:03d}.jpg" for i in range(10)]
    remote.objects["s3://inp/a.tar"] = make_tar(names)
    shards = plan_shards(job({"kind": "tar", "tar": "s3://inp/a.tar"}), storage, 4, 100)
    assert len(shards) == 3
    seen = []
    for shard in shards:
        assert shard.tar_slice is not None
        piece = shard.tar_slice
        stream = storage.open_stream(piece.uri, piece.start, piece.end)
        seen += [item.uri.split("#")[1] for item in iter_tar_items(stream, piece.uri, 1 << 20)]
    assert seen == names


def test_a_compressed_tar_is_one_shard(storage: Storage, remote: MemoryStore) -> None:
    data = make_tar(["a.jpg", "b.jpg"], "gz")
    remote.objects["s3://inp/a.tar.gz"] = data
    (shard,) = plan_shards(job({"kind": "tar", "tar": "s3://inp/a.tar.gz"}), storage, 1, 100)
    assert shard.tar_slice is not None
    assert (shard.tar_slice.start, shard.tar_slice.end) == (0, len(data))


def test_oversize_jobs_are_rejected(storage: Storage, remote: MemoryStore) -> None:
    uris = [f"s3://inp/{i}.jpg" for i in range(5)]
    with pytest.raises(JobRejected, match="oversize"):
        plan_shards(job({"kind": "uris", "uris": uris}), storage, 2, 4)
    remote.objects["s3://inp/a.tar"] = make_tar([f"{i}.jpg" for i in range(5)])
    with pytest.raises(JobRejected, match="oversize"):
        plan_shards(job({"kind": "tar", "tar": "s3://inp/a.tar"}), storage, 2, 4)


def test_a_missing_manifest_is_a_permanent_storage_error(storage: Storage) -> None:
    # Not JobRejected: the job is answered with a failed summary and its callback.
    with pytest.raises(ObjectNotFound):
        plan_shards(job({"kind": "manifest", "manifest": "s3://inp/nope.csv"}), storage, 2, 4)


def test_empty_inputs_give_one_empty_shard(storage: Storage) -> None:
    (shard,) = plan_shards(job({"kind": "prefix", "prefix": "s3://inp/empty/"}), storage, 2, 4)
    assert shard.items == []
    assert shard.count == 1
