"""S3Store and input expansion against a real SeaweedFS, over sockets."""

from __future__ import annotations

import io
import itertools
import tarfile
import threading

import boto3
import pytest

from contracts import ManifestInput, PrefixInput
from scripts.dev_s3 import SeaweedServer
from worker.classify.inputs import expand_job_inputs, iter_tar_items, tar_member_offsets
from worker.errors import ObjectNotFound, ObjectTooLarge
from worker.settings import Settings
from worker.storage import S3Store, Storage

pytestmark = pytest.mark.integration

MAX = 1024 * 1024


@pytest.fixture
def store(s3_settings: Settings) -> S3Store:
    return S3Store.from_settings(s3_settings)


def test_round_trip_and_errors(store: S3Store, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/a/b.jpg"
    store.put_bytes(uri, b"first")
    store.put_bytes(uri, b"second")
    assert store.get_bytes(uri) == b"second"
    assert store.exists(uri)
    with pytest.raises(ObjectTooLarge):
        store.get_bytes(uri, max_bytes=5)
    with pytest.raises(ObjectNotFound, match="no object"):
        store.get_bytes(f"s3://{s3_bucket}/missing.jpg")
    with pytest.raises(ObjectNotFound, match="bucket 'no-such-bucket-x' does not exist"):
        store.get_bytes("s3://no-such-bucket-x/a.jpg")
    store.delete(uri)
    store.delete(uri)
    assert not store.exists(uri)


def test_listing_pages_and_skips_folder_markers(s3_settings: Settings, s3_bucket: str) -> None:
    store = S3Store(S3Store.from_settings(s3_settings).client, page_size=10)
    keys = [f"in/{n:02}.jpg" for n in range(25)]
    for key in [*keys, "in/sub/", "inside.jpg"]:
        store.put_bytes(f"s3://{s3_bucket}/{key}", b"xy")
    listed = list(store.list_objects(f"s3://{s3_bucket}/in/"))
    assert [info.uri for info in listed] == [f"s3://{s3_bucket}/{key}" for key in keys]
    assert {info.size for info in listed} == {2}


def test_ranged_stream(store: S3Store, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/data.bin"
    data = bytes(range(256)) * 1000
    store.put_bytes(uri, data)
    with store.open_stream(uri, 1000, 200_000) as stream:
        assert stream.read(10) + stream.read() == data[1000:200_000]
    with store.open_stream(uri, 255_000) as stream:
        assert stream.read() == data[255_000:]


def test_put_if_absent(store: S3Store, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/job/claim"
    assert store.put_if_absent(uri, b"worker-1") is True
    assert store.put_if_absent(uri, b"worker-2") is False
    assert store.get_bytes(uri) == b"worker-1"


def test_put_if_absent_has_exactly_one_winner_among_8_threads(
    store: S3Store, s3_bucket: str
) -> None:
    """SeaweedFS serialises conditional writes to one key: losers wait 1-2 s for their 412."""
    uri = f"s3://{s3_bucket}/claim"
    start = threading.Barrier(8)
    results: dict[int, bool] = {}

    def claim(worker: int) -> None:
        start.wait()
        results[worker] = store.put_if_absent(uri, f"worker-{worker}".encode())

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [worker for worker, won in results.items() if won]
    assert len(results) == 8
    assert len(winners) == 1
    assert store.get_bytes(uri) == f"worker-{winners[0]}".encode()


def test_any_credentials_are_accepted(seaweed: SeaweedServer, s3_bucket: str) -> None:
    """Without -s3.config SeaweedFS runs open: tests need no shared secret."""
    for key_id in ["AKIAEXAMPLE", "someone-else"]:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=seaweed.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=f"{key_id}-secret",
        )
        client.put_object(Bucket=s3_bucket, Key=key_id, Body=b"ok")
        assert client.get_object(Bucket=s3_bucket, Key=key_id)["Body"].read() == b"ok"


def _tar(count: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for n in range(count):
            info = tarfile.TarInfo(f"{'real' if n % 2 else 'synthetic'}/{n:03}.jpg")
            data = bytes([n % 256]) * (700 + 300 * n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_object_streamed_and_sliced(s3_settings: Settings, s3_bucket: str) -> None:
    storage = Storage.from_settings(s3_settings)
    uri = f"s3://{s3_bucket}/shards/shard-0.tar"
    storage.put_bytes(uri, _tar(30), "application/x-tar")

    with storage.open_stream(uri) as stream:
        offsets = list(tar_member_offsets(stream))
    with storage.open_stream(uri) as stream:
        whole = {item.uri: item.load() for item in iter_tar_items(stream, uri, MAX)}
    assert len(offsets) == len(whole) == 30

    bounds = [offsets[i][1] for i in range(0, 30, 7)] + [offsets[-1][2]]
    sliced: dict[str, bytes] = {}
    for start, end in itertools.pairwise(bounds):
        with storage.open_stream(uri, start, end) as stream:
            for item in iter_tar_items(stream, uri, MAX):
                assert item.uri not in sliced
                sliced[item.uri] = item.load()
    assert sliced == whole


def test_expand_prefix_and_manifest(s3_settings: Settings, s3_bucket: str) -> None:
    storage = Storage.from_settings(s3_settings)
    images = [f"s3://{s3_bucket}/in/{n}.jpg" for n in range(5)]
    for uri in images:
        storage.put_bytes(uri, b"jpeg")
    storage.put_bytes(f"s3://{s3_bucket}/in/folder/", b"")
    manifest = f"s3://{s3_bucket}/manifest.csv"
    storage.put_bytes(manifest, ("uri,label\n" + "".join(f"{u},real\n" for u in images)).encode())

    from_prefix = expand_job_inputs(PrefixInput(prefix=f"s3://{s3_bucket}/in/"), storage, MAX)
    assert [(item.uri, item.load()) for item in from_prefix] == [(u, b"jpeg") for u in images]
    from_manifest = list(expand_job_inputs(ManifestInput(manifest=manifest), storage, MAX))
    assert [(item.uri, item.true_label) for item in from_manifest] == [(u, "real") for u in images]
