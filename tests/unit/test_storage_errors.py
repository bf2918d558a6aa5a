"""Which storage failures are retried (transient) and which fail at once (permanent)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from worker.errors import (
    AccessDenied,
    ObjectNotFound,
    ObjectTooLarge,
    RequestRejected,
    StorageError,
    is_transient,
)
from worker.objectreader import classify_obstore_error
from worker.storage import _map_client_error, classify_s3_error


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("NoSuchBucket", 404, ObjectNotFound),
        ("AccessDenied", 403, AccessDenied),
        ("InvalidAccessKeyId", 403, AccessDenied),
        ("InvalidBucketName", 400, RequestRejected),
        ("InvalidArgument", 400, RequestRejected),
        ("MethodNotAllowed", 405, RequestRejected),
        ("InvalidRange", 416, RequestRejected),
        ("SlowDown", 503, StorageError),
        ("ServiceUnavailable", 503, StorageError),
        ("InternalError", 500, StorageError),
        ("RequestTimeout", 400, StorageError),  # S3 sends its idle timeout as a 400
        ("RequestTimeTooSkewed", 403, AccessDenied),
        ("Throttling", 400, StorageError),
        ("OperationAborted", 409, StorageError),
        ("TooManyRequests", 429, StorageError),
        ("Unknown", 408, StorageError),
        ("Unknown", None, StorageError),
        ("BadGateway", 502, StorageError),
    ],
)
def test_s3_answers_are_classified(code: str, status: int | None, kind: type) -> None:
    assert classify_s3_error(code, status) is kind


def test_the_classes_say_whether_to_retry() -> None:
    assert is_transient(StorageError("timeout"))
    for permanent in (
        ObjectNotFound("x"),
        AccessDenied("x"),
        RequestRejected("x"),
        ObjectTooLarge("s3://b/k", 2, 1),
    ):
        assert not is_transient(permanent)
    assert not is_transient(ValueError("not storage"))
    codes = {cls.code for cls in (StorageError, ObjectNotFound, AccessDenied, RequestRejected)}
    assert codes == {"storage_unavailable", "not_found", "forbidden", "storage_rejected"}


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def test_a_400_is_rejected_with_its_code_and_address() -> None:
    error = _map_client_error(_client_error("InvalidBucketName", 400), "read", "s3://B_/k")
    assert isinstance(error, RequestRejected)
    assert "InvalidBucketName (HTTP 400)" in str(error)
    assert "s3://B_/k" in str(error)
    slow = _map_client_error(_client_error("SlowDown", 503), "read", "s3://b/k")
    assert type(slow) is StorageError


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            "Generic S3 error: Error performing GET http://h/b/k in 2ms - Server returned "
            "non-success status code: 400 Bad Request: <Error>",
            RequestRejected,
        ),
        ("Client error with status 416 Range Not Satisfiable", RequestRejected),
        ("Generic S3 error: ... status code: 503 Service Unavailable", StorageError),
        ("Generic S3 error: ... status code: 429 Too Many Requests", StorageError),
        (
            "Generic S3 error: Error after 2 retries in 1.2s, max_retries:2, "
            "retry_timeout:30s, source:error sending request: connection refused",
            StorageError,
        ),
    ],
)
def test_obstore_failures_are_classified_from_their_status(message: str, kind: type) -> None:
    error = classify_obstore_error(RuntimeError(message), "read", "s3://b/k")
    assert type(error) is kind
