"""The exceptions synthdetect raises, in one place.

::

    SynthdetectError
    ├── ImageFailure          one image cannot be classified; carries a stable ErrorCode
    ├── StorageError          the object store failed; ``transient`` says whether to retry
    │   ├── ObjectNotFound    no object (or file) at that address             (permanent)
    │   ├── AccessDenied      the store refused the request                    (permanent)
    │   ├── ObjectTooLarge    the object exceeds the size the caller allows    (permanent)
    │   └── RequestRejected   the store answered 4xx: the request is wrong     (permanent)
    ├── ModelError            a model or its card cannot be loaded or trusted
    │   └── ChecksumMismatch  the model file is not the file its card describes
    ├── JobRejected           a message that can never succeed (goes to the dead-letter queue)
    │   └── UnsafeKey         an S3 key with '..', '.', '//', control characters or '\\'
    └── WorkHandedBack        a shard stopped for a soft shutdown; its message goes back

``ImageFailure`` never escapes the pipeline: it becomes ``ImageResult.error``.
"""

from __future__ import annotations

from contracts import ErrorCode, ImageError


class SynthdetectError(Exception):
    """Base of every synthdetect exception."""


class ImageFailure(SynthdetectError):
    """One image failed; the job goes on. ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def to_contract(self) -> ImageError:
        """The wire form of this failure."""
        return ImageError(code=self.code, message=self.message)


class StorageError(SynthdetectError):
    """The object store failed; subclasses say how.

    A plain ``StorageError`` is *transient*: the store did not answer, timed out,
    throttled (503 SlowDown, 429) or failed on its side (5xx), and the same request
    may succeed later, so callers retry it (``worker.queue.retrywindow``). The
    subclasses are *permanent*: retrying the same request gives the same answer.
    ``code`` is the stable ``ErrorCode`` value the failure is reported with.
    """

    transient: bool = True
    code: str = "storage_unavailable"


class ObjectNotFound(StorageError):
    """No object or file exists at the address (nor, possibly, its bucket)."""

    transient = False
    code = "not_found"


class AccessDenied(StorageError):
    """The store refused the request (credentials, policy, permissions)."""

    transient = False
    code = "forbidden"


class RequestRejected(StorageError):
    """The store answered 4xx (not 403, 404, 408, 409 or 429): a malformed or
    unacceptable request (400 InvalidBucketName, 405, 411, 416, ...) that no retry mends."""

    transient = False
    code = "storage_rejected"


class ObjectTooLarge(StorageError):
    """The object is larger than the caller's limit; nothing beyond the limit was read."""

    transient = False
    code = "too_large"

    def __init__(self, uri: str, size: int, limit: int) -> None:
        super().__init__(f"{uri} is {size} bytes, more than the limit of {limit}")
        self.uri = uri
        self.size = size
        self.limit = limit


class ModelError(SynthdetectError):
    """A model cannot be found, loaded or trusted."""


class ChecksumMismatch(ModelError):
    """The model file's sha256 differs from the one in its card."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage failure worth retrying (see ``StorageError``)."""
    return isinstance(exc, StorageError) and exc.transient


class JobRejected(SynthdetectError):
    """A message that can never succeed; ``reason`` goes with it to the dead-letter queue."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkHandedBack(SynthdetectError):
    """A shard stopped because the worker is shutting down and could not finish it within
    the grace (``worker.lifecycle``); its message goes back to the queue, nothing was written."""


class UnsafeKey(JobRejected, ValueError):
    """An S3 address whose key breaks ``contracts.keys`` (traversal, ``//``, control
    characters, backslashes): refused before any request is made.

    A ``ValueError`` too, like every other malformed address ``parse_s3_uri`` refuses.
    """
