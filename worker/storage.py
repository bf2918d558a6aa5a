"""Object store access: one small interface, an S3 and a local-file implementation, a router.

Everything above this module reads and writes objects through ``ObjectStore``'s
seven methods, so tests can swap the store and the rest of the worker never sees
boto3 or ``OSError``. Failures surface as ``worker.errors.StorageError`` subclasses:

- ``ObjectNotFound``: no object (or file, or bucket) at the address;
- ``AccessDenied``: the store refused the request (HTTP 403, file permissions);
- ``ObjectTooLarge``: larger than the caller's limit, and the body was not read;
- ``RequestRejected``: any other 4xx but throttling and timeouts (400, 405, 411, ...);
- ``StorageError``: anything else (network, timeouts, throttling, 5xx), with the S3 code.

The first four are permanent (``StorageError.transient`` is False): retrying them
only delays the answer. ``classify_s3_error`` draws that line for S3 answers.

Addresses are strings: ``s3://bucket/key`` for S3, and plain paths or ``file://``
URIs for local files (the embedded mode). ``Storage`` routes by that scheme.
"""

from __future__ import annotations

import io
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from contracts.keys import key_problem
from worker.errors import (
    AccessDenied,
    ObjectNotFound,
    ObjectTooLarge,
    RequestRejected,
    StorageError,
    UnsafeKey,
)

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from types_boto3_s3 import S3Client

    from worker.objectreader import ObjectReader
    from worker.settings import Settings

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
DEFAULT_CONTENT_TYPE = "application/octet-stream"

_STREAM_BUFFER_BYTES = 1024 * 1024
"""Read-ahead of streams from ``open_stream``: few, large reads suit S3 and tar parsing."""

_CONFLICT_ATTEMPTS = 3
"""Tries of a conditional PUT that S3 answers with 409 (another conditional write in flight)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its address (same scheme as the listed prefix) and size in bytes."""

    uri: str
    size: int


class ObjectStore(Protocol):
    """What the worker needs from an object store; implementations are thread-safe."""

    def get_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The whole object; ``ObjectTooLarge`` before reading it if it exceeds ``max_bytes``."""
        ...

    def open_stream(self, uri: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A sequential reader of bytes ``[start, end)`` (to the end if ``end`` is None)."""
        ...

    def put_bytes(self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Write the object, replacing any previous one (so retried writes are harmless)."""
        ...

    def put_if_absent(
        self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> bool:
        """Write the object only if none exists; True if this call created it."""
        ...

    def list_objects(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        """Objects whose address starts with ``prefix_uri``, in key order, fetched lazily."""
        ...

    def exists(self, uri: str) -> bool:
        """Whether an object exists at the address."""
        ...

    def delete(self, uri: str) -> None:
        """Remove the object; removing a missing object is not an error (as in S3)."""
        ...


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")``; the key may be empty (a whole bucket).

    Every S3 request goes through here, so this is where a key is checked last
    (defence in depth behind the contracts' validators): ``UnsafeKey`` (a
    ``ValueError``) for a ``.``, ``..`` or empty segment, a control character or a
    backslash (``contracts.keys``). Raises ``ValueError`` when the string is not an S3
    address with a bucket.
    """
    if not uri.startswith(S3_SCHEME):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    problem = key_problem(key)
    if problem:
        raise UnsafeKey(f"refused {uri!r}: {problem}")
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """``base`` and ``parts`` joined by exactly one ``/`` each; empty parts are skipped.

    Works the same for ``s3://``, ``file://`` and POSIX paths, e.g.
    ``join_uri("s3://out/", "job-1", "summary.json") == "s3://out/job-1/summary.json"``.
    """
    pieces = [part.strip("/") for part in parts if part.strip("/")]
    return "/".join([base.rstrip("/"), *pieces]) if pieces else base


# --- S3 ------------------------------------------------------------------------------


class S3Store:
    """``ObjectStore`` over one boto3 S3 client (boto3 clients are thread-safe: share one).

    ``page_size`` is the number of keys asked for per ListObjectsV2 request (S3's
    maximum is 1000). ``reader``, when given, serves ``get_bytes`` and ``put_bytes``
    through obstore (``worker.objectreader``) at a fraction of botocore's CPU.
    """

    def __init__(
        self, client: S3Client, page_size: int = 1000, reader: ObjectReader | None = None
    ) -> None:
        self.client = client
        self.page_size = page_size
        self.reader = reader

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """A store whose client follows ``settings``; credentials come from the AWS chain.

        A custom endpoint (SeaweedFS, MinIO, Ceph, R2) gets path-style addressing,
        which S3-compatible servers accept without wildcard DNS.
        """
        config = Config(
            max_pool_connections=settings.s3_max_pool_connections,
            retries={"mode": "standard"},
            connect_timeout=settings.s3_connect_timeout_s,
            read_timeout=settings.s3_read_timeout_s,
            s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
        )
        # A private session: creating clients from the default one is not thread-safe.
        session = boto3.session.Session()
        client = session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=config,
        )
        return cls(client, reader=_object_reader(settings, session))

    def get_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """One GET; its Content-Length is checked against ``max_bytes`` before the body is read."""
        bucket, key = parse_s3_uri(uri)
        if self.reader is not None and self.reader.addressable(key):
            return self.reader.get_bytes(bucket, key, uri, max_bytes)
        with _s3_errors("read", uri):
            response = self.client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            size = response["ContentLength"]
            if max_bytes is not None and size > max_bytes:
                body.close()
                raise ObjectTooLarge(uri, size, max_bytes)
            return body.read()

    def open_stream(self, uri: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A ranged GET, read as the caller consumes it: the object is never held in memory.

        Read failures part-way raise ``StorageError`` from the stream's ``read``.
        """
        if end is not None and end <= start:
            return io.BytesIO(b"")
        bucket, key = parse_s3_uri(uri)
        with _s3_errors("read", uri):
            if start or end is not None:
                byte_range = f"bytes={start}-{'' if end is None else end - 1}"
                response = self.client.get_object(Bucket=bucket, Key=key, Range=byte_range)
            else:
                response = self.client.get_object(Bucket=bucket, Key=key)
        return io.BufferedReader(_S3Body(response["Body"], uri), _STREAM_BUFFER_BYTES)

    def put_bytes(self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """One PutObject, which replaces any previous object atomically."""
        bucket, key = parse_s3_uri(uri)
        if self.reader is not None and self.reader.addressable(key):
            self.reader.put_bytes(bucket, key, uri, data, content_type)
            return
        with _s3_errors("write", uri):
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    def put_if_absent(
        self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> bool:
        """PutObject with ``If-None-Match: *``: of concurrent callers exactly one gets True.

        S3 answers 412 when the object exists (-> False) and 409 when another
        conditional write to the key is in flight (retried; it then gets 412 if
        that other write won). When botocore had to resend the request (a lost
        response), a 412 may be our own earlier attempt: then the call returns
        True if the object holds exactly ``data``. So put something unique to the
        caller in ``data`` (a worker id and a random token) when it matters who won.
        """
        bucket, key = parse_s3_uri(uri)
        attempts = 0
        while True:
            attempts += 1
            try:
                self.client.put_object(
                    Bucket=bucket, Key=key, Body=data, ContentType=content_type, IfNoneMatch="*"
                )
            except ClientError as exc:
                metadata = exc.response.get("ResponseMetadata", {})
                if metadata.get("HTTPStatusCode") == 412:
                    return bool(metadata.get("RetryAttempts")) and self.get_bytes(uri) == data
                if metadata.get("HTTPStatusCode") != 409 or attempts == _CONFLICT_ATTEMPTS:
                    raise _map_client_error(exc, "write", uri) from exc
            except BotoCoreError as exc:
                raise StorageError(f"cannot write {uri}: {exc}") from exc
            else:
                return True

    def list_objects(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        """ListObjectsV2 page by page, skipping folder markers (keys ending in ``/``)."""
        bucket, prefix = parse_s3_uri(prefix_uri)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": self.page_size}
        )
        with _s3_errors("list", prefix_uri):
            for page in pages:
                for entry in page.get("Contents", []):
                    if not entry["Key"].endswith("/"):
                        yield ObjectInfo(f"{S3_SCHEME}{bucket}/{entry['Key']}", entry["Size"])

    def exists(self, uri: str) -> bool:
        """HEAD the object; a missing object or bucket is False, other failures raise."""
        bucket, key = parse_s3_uri(uri)
        try:
            with _s3_errors("read", uri):
                self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFound:
            return False
        return True

    def list_buckets(self) -> list[str]:
        """Names of the buckets these credentials can list (ListBuckets)."""
        with _s3_errors("list", S3_SCHEME):
            return [bucket["Name"] for bucket in self.client.list_buckets().get("Buckets", [])]

    def delete(self, uri: str) -> None:
        """DeleteObject (which S3 answers with success for a missing key, too)."""
        bucket, key = parse_s3_uri(uri)
        with _s3_errors("delete", uri):
            self.client.delete_object(Bucket=bucket, Key=key)


def _object_reader(settings: Settings, session: boto3.session.Session) -> ObjectReader | None:
    """obstore's reader when ``s3_get_client`` allows it and obstore is installed."""
    if settings.s3_get_client == "boto3":
        return None
    try:
        from worker.objectreader import ObjectReader, boto3_credentials
    except ImportError:
        if settings.s3_get_client == "obstore":
            raise
        return None
    return ObjectReader(
        boto3_credentials(session),
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        connect_timeout_s=settings.s3_connect_timeout_s,
        read_timeout_s=settings.s3_read_timeout_s,
    )


@contextmanager
def _s3_errors(action: str, uri: str) -> Iterator[None]:
    """Turn botocore exceptions raised inside into ``StorageError`` subclasses."""
    try:
        yield
    except ClientError as exc:
        raise _map_client_error(exc, action, uri) from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot {action} {uri}: {exc}") from exc


THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "OperationAborted",
        "InternalError",
        "ServiceUnavailable",
    }
)
"""S3 error codes that mean "try again later", whatever their HTTP status."""

_TRANSIENT_4XX = frozenset({408, 409, 429})
"""Request Timeout, Conflict (S3's OperationAborted), Too Many Requests."""


def classify_s3_error(code: str, status: int | None) -> type[StorageError]:
    """The ``StorageError`` class for an S3 error answer (``code``, HTTP ``status``).

    Permanent: missing bucket or key (404), refused (403), any other 4xx that is not
    a timeout, conflict or throttling (400 InvalidBucketName, 405, 411, 416, ...).
    Transient: throttling and timeouts by code or status, every 5xx, and answers
    without a status (the connection failed).
    """
    if code in ("NoSuchBucket", "NoSuchKey", "NotFound", "404") or status == 404:
        return ObjectNotFound
    if code in ("AccessDenied", "Forbidden", "403", "InvalidAccessKeyId") or status == 403:
        return AccessDenied
    if code in THROTTLING_CODES or status is None or status in _TRANSIENT_4XX or status >= 500:
        return StorageError
    if 400 <= status < 500:
        return RequestRejected
    return StorageError


def _map_client_error(exc: ClientError, action: str, uri: str) -> StorageError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    kind = classify_s3_error(code, status)
    if kind is ObjectNotFound and code == "NoSuchBucket":
        bucket = uri[len(S3_SCHEME) :].partition("/")[0]
        return ObjectNotFound(f"bucket {bucket!r} does not exist (cannot {action} {uri})")
    if kind is ObjectNotFound:
        return ObjectNotFound(f"no object at {uri}")
    if kind is AccessDenied:
        return AccessDenied(f"access denied: cannot {action} {uri} ({code})")
    detail = f"{code} (HTTP {status}) {error.get('Message', '')}".rstrip()
    if kind is RequestRejected:
        return RequestRejected(f"the store rejected the request: cannot {action} {uri}: {detail}")
    return StorageError(f"cannot {action} {uri}: {detail}")


class _S3Body(io.RawIOBase):
    """A GetObject body as a raw stream whose read failures are ``StorageError``."""

    def __init__(self, body: StreamingBody, uri: str) -> None:
        self._body = body
        self._uri = uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _s3_errors("read", self._uri):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


# --- local files -----------------------------------------------------------------------


def iter_files(directory: Path) -> Iterator[Path]:
    """Regular files under ``directory``, recursively, in the order S3 lists keys.

    Hidden names (starting with ``.``) are skipped, folders included: they are
    OS and editor litter, and ``LocalStore``'s own temporary files. S3 sorts by
    the whole key, so ``a/b.txt`` comes before ``a/b/x`` ('.' < '/'); sorting each
    folder's entries by name, with ``/`` appended to sub-folders, gives the same
    order while holding only one folder's entries at a time. Links to files are
    followed, links to folders are not (no cycles).
    """
    with os.scandir(directory) as scan:
        entries = [entry for entry in scan if not entry.name.startswith(".")]
    entries.sort(
        key=lambda entry: os.fsencode(entry.name + "/" if _is_folder(entry) else entry.name)
    )
    for entry in entries:
        if _is_folder(entry):
            yield from iter_files(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def _is_folder(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False)


class LocalStore:
    """``ObjectStore`` over the local file system, for plain paths and ``file://`` URIs."""

    def get_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The file's bytes; its size is checked against ``max_bytes`` before reading."""
        with _os_errors(uri), open(_local_path(uri), "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLarge(uri, size, max_bytes)
            return file.read()

    def open_stream(self, uri: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """The open file, positioned at ``start`` and cut off at ``end``."""
        with _os_errors(uri):
            file = open(_local_path(uri), "rb")  # noqa: SIM115 - the caller closes the stream
        file.seek(start)
        if end is None:
            return file
        return io.BufferedReader(_Window(file, max(end - start, 0)), _STREAM_BUFFER_BYTES)

    def put_bytes(self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Write a temporary file and rename it: readers see the old or the new file, whole."""
        path = _local_path(uri)
        with _os_errors(uri), _temporary_copy(path, data) as temporary:
            os.replace(temporary, path)

    def put_if_absent(
        self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> bool:
        """Hard-link a complete temporary file into place: atomic, and refused if taken.

        Unlike ``open(path, "xb")``, no reader ever sees a half-written file.
        """
        path = _local_path(uri)
        with _os_errors(uri), _temporary_copy(path, data) as temporary:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
        return True

    def list_objects(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        """Files whose address starts with ``prefix_uri``: a folder, or a folder and a name start.

        As in S3, every listed address starts with ``prefix_uri`` spelled as given
        (``./photos/a.jpg`` for ``./photos``). Hidden files are skipped (see
        ``iter_files``); a missing folder lists nothing.
        """
        path = _local_path(prefix_uri)
        if prefix_uri.endswith("/") or path.is_dir():
            folder, spelled = path, prefix_uri.rstrip("/") + "/"
        else:
            folder, spelled = path.parent, prefix_uri[: prefix_uri.rfind("/") + 1]
        if not folder.is_dir():
            return
        with _os_errors(prefix_uri):
            for file in iter_files(folder):
                uri = spelled + file.relative_to(folder).as_posix()
                if uri.startswith(prefix_uri):
                    yield ObjectInfo(uri, file.stat().st_size)

    def exists(self, uri: str) -> bool:
        """Whether a regular file exists at the path."""
        return _local_path(uri).is_file()

    def delete(self, uri: str) -> None:
        """Remove the file if it exists."""
        with _os_errors(uri):
            _local_path(uri).unlink(missing_ok=True)


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix(FILE_SCHEME))


@contextmanager
def _temporary_copy(path: Path, data: bytes) -> Iterator[str]:
    """A complete copy of ``data`` beside ``path`` (same file system: rename is atomic).

    The copy is removed on exit unless it was renamed into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = str(path.parent / f".{path.name}.{secrets.token_hex(8)}")
    # O_EXCL + mode 0666 (minus the umask): unlike mkstemp's 0600, results and reports
    # end up as readable as any other file the user writes.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        yield temporary
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temporary)


@contextmanager
def _os_errors(uri: str) -> Iterator[None]:
    """Turn ``OSError`` raised inside into ``StorageError`` subclasses."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise ObjectNotFound(f"no file at {uri}") from exc
    except PermissionError as exc:
        raise AccessDenied(f"permission denied: {uri}") from exc
    except OSError as exc:
        raise StorageError(f"cannot access {uri}: {exc.strerror or exc}") from exc


class _Window(io.RawIOBase):
    """At most ``length`` bytes of an open file, from its current position."""

    def __init__(self, file: BinaryIO, length: int) -> None:
        self._file = file
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._file.read(min(len(buffer), self._left))
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


# --- routing ---------------------------------------------------------------------------


class Storage:
    """Routes each address to its store: ``s3://`` to S3, anything else to local files.

    The S3 store is created on first use, so reading local files (the CLI's
    embedded mode) needs no S3 configuration or credentials.
    """

    def __init__(
        self, s3_factory: Callable[[], ObjectStore], local: ObjectStore | None = None
    ) -> None:
        self._s3_factory = s3_factory
        self._s3: ObjectStore | None = None
        self._lock = threading.Lock()
        self.local = local or LocalStore()

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        """The router the worker and the CLI use."""
        return cls(lambda: S3Store.from_settings(settings))

    @property
    def s3(self) -> ObjectStore:
        """The S3 store, created once (thread-safely) on first access."""
        if self._s3 is None:
            with self._lock:
                if self._s3 is None:
                    self._s3 = self._s3_factory()
        return self._s3

    def s3_buckets(self) -> list[str]:
        """The S3 buckets the credentials can list; empty for a store that cannot list them."""
        lister = getattr(self.s3, "list_buckets", None)
        return list(lister()) if callable(lister) else []

    def store_for(self, uri: str) -> ObjectStore:
        """The store that serves ``uri``."""
        return self.s3 if uri.startswith(S3_SCHEME) else self.local

    def get_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """See ``ObjectStore.get_bytes``."""
        return self.store_for(uri).get_bytes(uri, max_bytes)

    def open_stream(self, uri: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """See ``ObjectStore.open_stream``."""
        return self.store_for(uri).open_stream(uri, start, end)

    def put_bytes(self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """See ``ObjectStore.put_bytes``."""
        self.store_for(uri).put_bytes(uri, data, content_type)

    def put_if_absent(
        self, uri: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> bool:
        """See ``ObjectStore.put_if_absent``."""
        return self.store_for(uri).put_if_absent(uri, data, content_type)

    def list_objects(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        """See ``ObjectStore.list_objects``."""
        return self.store_for(prefix_uri).list_objects(prefix_uri)

    def exists(self, uri: str) -> bool:
        """See ``ObjectStore.exists``."""
        return self.store_for(uri).exists(uri)

    def delete(self, uri: str) -> None:
        """See ``ObjectStore.delete``."""
        self.store_for(uri).delete(uri)
