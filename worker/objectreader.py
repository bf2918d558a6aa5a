"""Whole-object S3 GETs and PUTs through obstore (Rust ``object_store``).

Reading small objects is what a classify job mostly does, and botocore spends
about 1.5 ms of Python per GET on request signing, event hooks and response
parsing: on a 2-core machine that alone capped a job at about 500 images/s.
obstore does the same GET in Rust with the GIL released, at about a fifth of
the CPU (``scripts/bench`` measures both side by side: ``raw_get_boto3_*``,
``raw_get_obstore_*``), and a small GET or PUT in about half the wall time,
which a one-image job's dozen reads and writes add up. Listing, deleting and
conditional writes stay on boto3 (``S3Store``).

Credentials come from the same AWS chain as boto3's (a boto3 session is asked,
and asked again before they expire). Errors become the same ``StorageError``
subclasses ``S3Store`` raises.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import (
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store as ObstoreS3

from worker.errors import (
    AccessDenied,
    ObjectNotFound,
    ObjectTooLarge,
    RequestRejected,
    StorageError,
)

if TYPE_CHECKING:
    from obstore.store import S3Credential

Credentials = Callable[[], "S3Credential"]


def boto3_credentials(session: Any) -> Credentials:
    """A credential provider backed by a boto3 session (the standard AWS chain)."""

    def provide() -> S3Credential:
        found = session.get_credentials()
        if found is None:
            raise StorageError("no AWS credentials found (environment, profile or role)")
        frozen = found.get_frozen_credentials()
        expiry = getattr(found, "_expiry_time", None)
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": expiry or datetime.now(UTC) + timedelta(minutes=5),
        }

    return provide


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def addressable(key: str) -> bool:
    """Whether obstore reaches exactly this key.

    Its paths have no empty, ``.`` or ``..`` segments and no trailing ``/``, and
    refuse control characters: such keys (legal in S3) go through boto3.
    """
    if not key or key.startswith("/") or key.endswith("/") or "//" in key:
        return False
    if _CONTROL.search(key):
        return False
    return not any(part in (".", "..") for part in key.split("/"))


_STATUS = re.compile(r"\b(?:status(?: code)?:?\s*)(\d{3})\b", re.IGNORECASE)
"""How object_store reports an HTTP answer: "... non-success status code: 400 Bad Request"."""


def classify_obstore_error(exc: BaseException, action: str, uri: str) -> StorageError:
    """The ``StorageError`` for an obstore failure that is not not-found or permission.

    object_store has no class for "the server answered 4xx": its status sits in the
    message. A 4xx other than 408, 409 and 429 is permanent (``RequestRejected``);
    everything else (5xx, throttling, refused or reset connections, timeouts) stays
    a transient ``StorageError``.
    """
    match = _STATUS.search(str(exc))
    status = int(match.group(1)) if match else None
    line = _first_line(exc)
    if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
        return RequestRejected(f"the store rejected the request: cannot {action} {uri}: {line}")
    return StorageError(f"cannot {action} {uri}: {line}")


def _first_line(exc: BaseException) -> str:
    """obstore's messages carry a whole debug dump of the request; the first line says it."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class ObjectReader:
    """GETs whole objects, one obstore client per bucket (each keeps a connection pool)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        endpoint_url: str | None,
        region: str,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self._credentials = credentials
        self._endpoint_url = endpoint_url
        self._region = region
        self._connect_timeout = timedelta(seconds=connect_timeout_s)
        self._read_timeout = timedelta(seconds=read_timeout_s)
        self._stores: dict[str, ObstoreS3] = {}
        self._lock = threading.Lock()

    @staticmethod
    def addressable(key: str) -> bool:
        """See the module function ``addressable``."""
        return addressable(key)

    def get_bytes(self, bucket: str, key: str, uri: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; ``ObjectTooLarge`` before reading a body over ``max_bytes``."""
        try:
            result = obstore.get(self._store(bucket), key)
            size = int(result.meta["size"])
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLarge(uri, size, max_bytes)
            return result.bytes().to_bytes()
        except (NotFoundError, FileNotFoundError) as exc:  # obstore raises either
            if "NoSuchBucket" in str(exc):
                raise ObjectNotFound(
                    f"bucket {bucket!r} does not exist (cannot read {uri})"
                ) from exc
            raise ObjectNotFound(f"no object at {uri}") from exc
        except (PermissionDeniedError, UnauthenticatedError, PermissionError) as exc:
            raise AccessDenied(f"access denied: cannot read {uri} ({_first_line(exc)})") from exc
        except (BaseError, OSError, RuntimeError) as exc:
            raise classify_obstore_error(exc, "read", uri) from exc

    def put_bytes(self, bucket: str, key: str, uri: str, data: bytes, content_type: str) -> None:
        """One PUT replacing any previous object."""
        try:
            obstore.put(
                self._store(bucket),
                key,
                data,
                attributes={"Content-Type": content_type},
                use_multipart=False,
            )
        except (PermissionDeniedError, UnauthenticatedError, PermissionError) as exc:
            raise AccessDenied(f"access denied: cannot write {uri} ({_first_line(exc)})") from exc
        except (BaseError, OSError, RuntimeError) as exc:
            raise classify_obstore_error(exc, "write", uri) from exc

    def _store(self, bucket: str) -> ObstoreS3:
        store = self._stores.get(bucket)
        if store is None:
            with self._lock:
                store = self._stores.get(bucket)
                if store is None:
                    store = self._new_store(bucket)
                    self._stores[bucket] = store
        return store

    def _new_store(self, bucket: str) -> ObstoreS3:
        options: dict[str, Any] = {
            "connect_timeout": self._connect_timeout,
            "read_timeout": self._read_timeout,
        }
        config: dict[str, Any] = {"region": self._region}
        if self._endpoint_url:
            config["endpoint"] = self._endpoint_url
            config["virtual_hosted_style_request"] = False
            options["allow_http"] = self._endpoint_url.startswith("http://")
        return ObstoreS3(
            bucket,
            config=config,  # type: ignore[arg-type]
            client_options=options,  # type: ignore[arg-type]
            retry_config={"max_retries": 2, "retry_timeout": self._read_timeout},
            credential_provider=self._credentials,
        )
