"""The exceptions synthdetect raises, in one place.

::

    SynthdetectError
    ├── ImageFailure          one image cannot be classified; carries a stable ErrorCode
    ├── StorageError          the object store failed
    │   ├── ObjectNotFound    no object (or file) at that address
    │   ├── AccessDenied      the store refused the request
    │   └── ObjectTooLarge    the object exceeds the size the caller allows
    ├── ModelError            a model or its card cannot be loaded or trusted
    │   └── ChecksumMismatch  the model file is not the file its card describes
    └── JobRejected           a message that can never succeed (goes to the dead-letter queue)
        └── UnsafeKey         an S3 key with '..', '.', '//', control characters or '\\'

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
    """The object store failed; subclasses say how."""


class ObjectNotFound(StorageError):
    """No object or file exists at the address."""


class AccessDenied(StorageError):
    """The store refused the request (credentials, policy, permissions)."""


class ObjectTooLarge(StorageError):
    """The object is larger than the caller's limit; nothing beyond the limit was read."""

    def __init__(self, uri: str, size: int, limit: int) -> None:
        super().__init__(f"{uri} is {size} bytes, more than the limit of {limit}")
        self.uri = uri
        self.size = size
        self.limit = limit


class ModelError(SynthdetectError):
    """A model cannot be found, loaded or trusted."""


class ChecksumMismatch(ModelError):
    """The model file's sha256 differs from the one in its card."""


class JobRejected(SynthdetectError):
    """A message that can never succeed; ``reason`` goes with it to the dead-letter queue."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsafeKey(JobRejected, ValueError):
    """An S3 address whose key breaks ``contracts.keys`` (traversal, ``//``, control
    characters, backslashes): refused before any request is made.

    A ``ValueError`` too, like every other malformed address ``parse_s3_uri`` refuses.
    """
