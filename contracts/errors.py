"""Stable per-image error codes.

A code never changes meaning once published; producers may switch on it. The
message next to it is for people and may change wording.
"""

from __future__ import annotations

from enum import StrEnum

from contracts._base import Contract


class ErrorCode(StrEnum):
    """Why one image has no label."""

    NOT_FOUND = "not_found"
    """The object or file does not exist."""
    FORBIDDEN = "forbidden"
    """The store refused access (credentials, bucket policy)."""
    FETCH_FAILED = "fetch_failed"
    """Reading the object failed for another reason than those below."""
    STORAGE_UNAVAILABLE = "storage_unavailable"
    """The store did not answer, throttled or failed on its side (5xx) for longer than the
    worker's retry window (``SYNTHDETECT_STORAGE_RETRY_WINDOW_S``); resubmit the job later."""
    STORAGE_REJECTED = "storage_rejected"
    """The store answered 4xx to the request (not 403, 404, throttling or a timeout), e.g.
    an invalid bucket name; retrying the same request cannot succeed."""
    EMPTY_FILE = "empty_file"
    """The object has zero bytes."""
    TOO_LARGE = "too_large"
    """The object is larger than the configured maximum number of bytes."""
    TOO_MANY_PIXELS = "too_many_pixels"
    """Width x height exceeds the configured maximum (decompression-bomb guard)."""
    UNSAFE_KEY = "unsafe_key"
    """The object's key has an empty, ``.`` or ``..`` segment, a control character or a
    backslash (``contracts.keys``); the worker never reads or writes such a key."""
    UNSUPPORTED_MEMBER = "unsupported_member"
    """A tar member that is not a regular file (symbolic or hard link, FIFO, device,
    unknown type): its bytes are never read or followed."""
    UNSUPPORTED_FORMAT = "unsupported_format"
    """The bytes are not an image, or an image format that is not allowed."""
    CORRUPT_IMAGE = "corrupt_image"
    """The format was recognised but decoding failed (truncated or damaged data)."""
    INFERENCE_FAILED = "inference_failed"
    """The model raised while scoring this image's batch."""
    INTERNAL_ERROR = "internal_error"
    """An unexpected failure inside synthdetect (a bug); the worker log has the details."""
    OUT_OF_DOMAIN = "out_of_domain"
    """Not a failure: the model abstained because the image lies outside the domain it
    was trained on (``ImageResult.domain`` says why; its scores are still reported)."""


class ImageError(Contract):
    """A structured, per-image failure: a stable code and a sentence for people."""

    code: ErrorCode
    message: str
