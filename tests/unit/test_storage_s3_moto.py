"""S3Store against moto's in-process S3, and against botocore's Stubber for rare answers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from contracts import ErrorCode, PrefixInput
from worker.classify.inputs import expand_job_inputs, iter_manifest_rows
from worker.errors import (
    AccessDenied,
    ImageFailure,
    JobRejected,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    UnsafeKey,
)
from worker.settings import Settings
from worker.storage import ObjectInfo, S3Store, Storage

BUCKET = "images"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield s3


@pytest.fixture
def store(client: Any) -> S3Store:
    return S3Store(client)


def record_operations(client: Any) -> list[str]:
    """The names of the S3 operations ``client`` sends from now on."""
    sent: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: sent.append(model.name))
    return sent


def test_round_trip(store: S3Store) -> None:
    store.put_bytes(f"s3://{BUCKET}/a/b.jpg", b"jpeg", "image/jpeg")
    assert store.get_bytes(f"s3://{BUCKET}/a/b.jpg") == b"jpeg"
    assert store.client.head_object(Bucket=BUCKET, Key="a/b.jpg")["ContentType"] == "image/jpeg"
    assert store.exists(f"s3://{BUCKET}/a/b.jpg")
    store.delete(f"s3://{BUCKET}/a/b.jpg")
    assert not store.exists(f"s3://{BUCKET}/a/b.jpg")


def test_missing_key_is_not_found(store: S3Store) -> None:
    with pytest.raises(ObjectNotFound, match="no object at s3://images/nope"):
        store.get_bytes(f"s3://{BUCKET}/nope")


def test_missing_bucket_is_not_found_and_named(store: S3Store) -> None:
    with pytest.raises(ObjectNotFound, match="bucket 'no-such-bucket' does not exist"):
        store.get_bytes("s3://no-such-bucket/a.jpg")
    with pytest.raises(ObjectNotFound, match="no-such-bucket"):
        list(store.list_objects("s3://no-such-bucket/"))
    assert not store.exists("s3://no-such-bucket/a.jpg")


def test_too_large_is_decided_from_one_get(store: S3Store) -> None:
    store.put_bytes(f"s3://{BUCKET}/big.jpg", bytes(100))
    sent = record_operations(store.client)
    with pytest.raises(ObjectTooLarge) as caught:
        store.get_bytes(f"s3://{BUCKET}/big.jpg", max_bytes=99)
    assert (caught.value.size, caught.value.limit) == (100, 99)
    assert sent == ["GetObject"]  # no HEAD first
    assert store.get_bytes(f"s3://{BUCKET}/big.jpg", max_bytes=100) == bytes(100)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, None, b"0123456789"), (4, None, b"456789"), (2, 5, b"234"), (7, 7, b"")],
)
def test_open_stream_reads_a_range(
    store: S3Store, start: int, end: int | None, expected: bytes
) -> None:
    store.put_bytes(f"s3://{BUCKET}/data.bin", b"0123456789")
    with store.open_stream(f"s3://{BUCKET}/data.bin", start, end) as stream:
        assert stream.read(2) + stream.read() == expected


def test_open_stream_of_missing_object_is_not_found(store: S3Store) -> None:
    with pytest.raises(ObjectNotFound):
        store.open_stream(f"s3://{BUCKET}/nope.tar")


def test_listing_pages_lazily_in_key_order_without_folder_markers(client: Any) -> None:
    store = S3Store(client, page_size=300)
    keys = [f"in/{n:05}.jpg" for n in range(1005)]
    for key in [*keys, "in/folder/", "other/x.jpg"]:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"ab")
    sent = record_operations(client)
    listing = store.list_objects(f"s3://{BUCKET}/in/")
    assert next(listing) == ObjectInfo(f"s3://{BUCKET}/in/00000.jpg", 2)
    assert sent == ["ListObjectsV2"]  # one page fetched so far
    rest = list(listing)
    assert [info.uri for info in rest] == [f"s3://{BUCKET}/{key}" for key in keys[1:]]
    assert sent == ["ListObjectsV2"] * 4  # 1006 keys in pages of 300


def test_put_if_absent(store: S3Store) -> None:
    uri = f"s3://{BUCKET}/job/claim"
    assert store.put_if_absent(uri, b"worker-1") is True
    assert store.put_if_absent(uri, b"worker-2") is False
    assert store.get_bytes(uri) == b"worker-1"


def test_from_settings_configures_the_client() -> None:
    settings = Settings(
        s3_endpoint_url="http://127.0.0.1:8333",
        s3_region="eu-west-1",
        s3_max_pool_connections=7,
        s3_connect_timeout_s=1.5,
        s3_read_timeout_s=9,
    )
    client = S3Store.from_settings(settings).client
    config = client.meta.config
    assert client.meta.endpoint_url == "http://127.0.0.1:8333"
    assert client.meta.region_name == "eu-west-1"
    assert (config.max_pool_connections, config.connect_timeout, config.read_timeout) == (7, 1.5, 9)
    assert config.retries["mode"] == "standard"
    assert config.s3 == {"addressing_style": "path"}


# --- answers moto does not give: botocore's Stubber ----------------------------------------------


@pytest.fixture
def stubbed() -> Iterator[tuple[S3Store, Stubber]]:
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stubber:
        yield S3Store(client), stubber
        stubber.assert_no_pending_responses()


def test_forbidden_is_access_denied(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", "AccessDenied", http_status_code=403)
    stubber.add_client_error("head_object", "403", http_status_code=403)
    with pytest.raises(AccessDenied):
        store.get_bytes("s3://b/k")
    with pytest.raises(AccessDenied):
        store.exists("s3://b/k")


def test_other_errors_carry_their_code(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_client_error("put_object", "SlowDown", "Reduce your rate", http_status_code=503)
    with pytest.raises(StorageError, match="SlowDown \\(HTTP 503\\) Reduce your rate") as caught:
        store.put_bytes("s3://b/k", b"x")
    assert type(caught.value) is StorageError


def test_put_if_absent_retries_a_conflict(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
    stubber.add_response("put_object", {})
    assert store.put_if_absent("s3://b/claim", b"me") is True


def test_put_if_absent_gives_up_after_repeated_conflicts(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stubber = stubbed
    for _ in range(3):
        stubber.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
    with pytest.raises(StorageError, match="ConditionalRequestConflict"):
        store.put_if_absent("s3://b/claim", b"me")


@pytest.mark.parametrize(("stored", "created"), [(b"me-123", True), (b"other-456", False)])
def test_put_if_absent_after_a_resent_request_checks_the_content(
    stubbed: tuple[S3Store, Stubber], stored: bytes, created: bool
) -> None:
    """A 412 on a resent request may answer our own first attempt, whose response was lost."""
    store, stubber = stubbed
    stubber.add_client_error(
        "put_object", "PreconditionFailed", http_status_code=412, response_meta={"RetryAttempts": 1}
    )
    stubber.add_response("get_object", {"Body": _body(stored), "ContentLength": len(stored)})
    assert store.put_if_absent("s3://b/claim", b"me-123") is created


def _body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


# --- unsafe keys: refused before any request (defence in depth behind the contracts) ----------

UNSAFE = [
    f"s3://{BUCKET}/tenant-a/../../other/x",
    f"s3://{BUCKET}/./a.jpg",
    f"s3://{BUCKET}/a//b.jpg",
    f"s3://{BUCKET}/a\nb.jpg",
    f"s3://{BUCKET}/a\\b.jpg",
]


@pytest.mark.parametrize("uri", UNSAFE)
def test_every_operation_refuses_an_unsafe_key_without_a_request(
    store: S3Store, client: Any, uri: str
) -> None:
    sent = record_operations(client)
    operations = [
        lambda: store.get_bytes(uri),
        lambda: store.open_stream(uri),
        lambda: store.put_bytes(uri, b"x"),
        lambda: store.put_if_absent(uri, b"x"),
        lambda: list(store.list_objects(uri)),
        lambda: store.exists(uri),
        lambda: store.delete(uri),
    ]
    for operation in operations:
        with pytest.raises(UnsafeKey, match="is not allowed"):
            operation()
    assert sent == []


def test_a_listed_key_with_dot_dot_becomes_an_unsafe_key_row(store: S3Store, client: Any) -> None:
    """S3 keeps ``..`` literally, so a listing can return it; the worker never reads it."""
    client.put_object(Bucket=BUCKET, Key="in/ok.jpg", Body=b"jpeg")
    client.put_object(Bucket=BUCKET, Key="in/a/../b.jpg", Body=b"jpeg")
    storage = Storage(lambda: store)
    inputs = PrefixInput(prefix=f"s3://{BUCKET}/in/")
    items = {item.uri: item for item in expand_job_inputs(inputs, storage, 1 << 20)}
    assert items[f"s3://{BUCKET}/in/ok.jpg"].load() == b"jpeg"
    with pytest.raises(ImageFailure) as caught:
        items[f"s3://{BUCKET}/in/a/../b.jpg"].load()
    assert caught.value.code == ErrorCode.UNSAFE_KEY
    assert "'..' segment" in caught.value.message


def test_a_manifest_row_with_an_unsafe_key_rejects_the_job_naming_the_line() -> None:
    manifest = io.BytesIO(b"uri,label\ns3://images/ok.jpg,real\ns3://images/x/../../y.jpg,real\n")
    rows = iter_manifest_rows(manifest, "s3://images/m.csv")
    assert next(rows).uri == "s3://images/ok.jpg"
    with pytest.raises(JobRejected, match=r"line 3: refused .*'\.\.' segment"):
        next(rows)
