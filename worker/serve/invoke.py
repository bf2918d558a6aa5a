"""Invoke: images from a request to ``ImageResult``s, the way a classify job makes them.

Every image goes through ``worker.classify.pipeline.classify_items``, the
pipeline a worker runs (decode within ``ImageLimits``, provenance, the shared
dynamic batcher, the domain check and the verdict policy), in the urgent lane:
an invoke never queues behind bulk work in the same process. So the API answers
exactly what a job would, for the same bytes and model version.

Where an image comes from:

- bytes of the request (raw body or a multipart file part);
- ``s3://bucket/key``: read with the process's storage (its credentials);
- ``https://`` (or ``http://``) URL: fetched only after the callbacks' SSRF guard
  (``worker.webhooks.delivery.check_callback_url``) accepted its host, with
  ``SYNTHDETECT_SERVE_URI_ALLOWLIST`` as the allow-list; redirects are not
  followed, the body is cut at ``SYNTHDETECT_MAX_IMAGE_BYTES``, and the whole
  fetch is bounded by ``SYNTHDETECT_SERVE_FETCH_TIMEOUT_S``.

Whatever is wrong with a request as a whole raises ``InvokeError`` with a stable
``ApiErrorCode``; what is wrong with one image is that image's ``ImageResult.error``
(its code is one of ``contracts.ErrorCode``), as in a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from contracts import ErrorCode, ImageResult, ModelRef
from worker.classify.inputs import InputItem, object_item
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.errors import ImageFailure, ModelError
from worker.imaging import ImageLimits
from worker.settings import Settings
from worker.storage import Storage, parse_s3_uri
from worker.webhooks.delivery import CallbackRefused, check_callback_url, system_resolver

if TYPE_CHECKING:  # torch loads with the engine, not with this module
    from worker.inference.engine import InferenceEngine


class ApiErrorCode(StrEnum):
    """Why a request was refused as a whole (per-image failures use ``contracts.ErrorCode``)."""

    UNAUTHENTICATED = "unauthenticated"
    """No API key, or one that is malformed, unknown or revoked."""
    PAYLOAD_TOO_LARGE = "payload_too_large"
    """The request body is larger than ``SYNTHDETECT_SERVE_MAX_REQUEST_BYTES``."""
    TOO_MANY_IMAGES = "too_many_images"
    """A batch holds more images than ``SYNTHDETECT_SERVE_MAX_BATCH_IMAGES``."""
    NO_IMAGE = "no_image"
    """The request carries no image: an empty body, or a form without a file."""
    BAD_REQUEST = "bad_request"
    """The body cannot be parsed (malformed JSON or multipart)."""
    INVALID_REQUEST = "invalid_request"
    """The JSON body or a query parameter has a wrong or unknown field."""
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    """A content type the endpoint does not take (e.g. an urlencoded form)."""
    BAD_URI = "bad_uri"
    """The URI is not ``s3://bucket/key`` or an ``http(s)://`` URL with a host."""
    URI_REFUSED = "uri_refused"
    """The URL's host resolves to a loopback, private, link-local or metadata address."""
    MODEL_UNAVAILABLE = "model_unavailable"
    """The model (or version) asked for does not exist or cannot be loaded."""
    NO_SUCH_ENDPOINT = "no_such_endpoint"
    """No API endpoint at that path."""
    METHOD_NOT_ALLOWED = "method_not_allowed"
    """The endpoint exists but takes another method (the invoke endpoints take POST)."""


API_ERROR_STATUS: dict[ApiErrorCode, int] = {
    ApiErrorCode.UNAUTHENTICATED: 401,
    ApiErrorCode.PAYLOAD_TOO_LARGE: 413,
    ApiErrorCode.TOO_MANY_IMAGES: 413,
    ApiErrorCode.NO_IMAGE: 400,
    ApiErrorCode.BAD_REQUEST: 400,
    ApiErrorCode.INVALID_REQUEST: 422,
    ApiErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ApiErrorCode.BAD_URI: 400,
    ApiErrorCode.URI_REFUSED: 400,
    ApiErrorCode.MODEL_UNAVAILABLE: 422,
    ApiErrorCode.NO_SUCH_ENDPOINT: 404,
    ApiErrorCode.METHOD_NOT_ALLOWED: 405,
}

IMAGE_ERROR_STATUS: dict[ErrorCode, int] = {
    ErrorCode.NOT_FOUND: 422,
    ErrorCode.FORBIDDEN: 422,
    ErrorCode.FETCH_FAILED: 502,
    ErrorCode.EMPTY_FILE: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.TOO_MANY_PIXELS: 413,
    ErrorCode.UNSUPPORTED_FORMAT: 415,
    ErrorCode.CORRUPT_IMAGE: 422,
    ErrorCode.INFERENCE_FAILED: 500,
    ErrorCode.INTERNAL_ERROR: 500,
}
"""The status of a single invoke whose image failed (``out_of_domain`` is a 200 answer)."""


class InvokeError(Exception):
    """A request refused as a whole: a stable code, a sentence, its HTTP status."""

    def __init__(self, code: ApiErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return API_ERROR_STATUS[self.code]


@dataclass(frozen=True)
class Invoker:
    """Runs invokes for one process: the engine, storage, settings and an HTTP client."""

    engine: InferenceEngine
    settings: Settings
    storage: Storage
    http: httpx.Client

    @property
    def config(self) -> PipelineConfig:
        return PipelineConfig.from_settings(self.settings, urgent=True)

    def run(self, items: list[InputItem], model: ModelRef) -> list[ImageResult]:
        """One ``ImageResult`` per item, in order (blocking: call it from a thread)."""
        try:
            return list(
                classify_items(
                    items, self.engine, model, ImageLimits.from_settings(self.settings), self.config
                )
            )
        except ModelError as exc:
            raise InvokeError(ApiErrorCode.MODEL_UNAVAILABLE, str(exc)) from exc


def bytes_item(name: str, data: bytes) -> InputItem:
    """An image sent in the request; ``name`` becomes its result's ``uri``."""

    def load() -> bytes:
        if not data:
            raise ImageFailure(ErrorCode.EMPTY_FILE, f"{name} has zero bytes")
        return data

    return InputItem(name, load, in_memory=True, size=len(data))


def check_uri(uri: str, settings: Settings) -> str:
    """The URI's kind (``s3`` or ``http``), or ``InvokeError`` (bad_uri, uri_refused).

    The SSRF guard resolves the host (blocking: call from a thread); a host that
    does not resolve passes here and fails as that image's ``fetch_failed``.
    """
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        try:
            parse_s3_uri(uri)
        except ValueError as exc:
            raise InvokeError(ApiErrorCode.BAD_URI, str(exc)) from exc
        if not parts.path.strip("/"):
            raise InvokeError(ApiErrorCode.BAD_URI, f"{uri!r} names a bucket, not an object")
        return "s3"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvokeError(
            ApiErrorCode.BAD_URI,
            f"{uri!r} is not an s3://bucket/key or http(s):// URL with a host",
        )
    try:
        check_callback_url(uri, settings.serve_uri_allowlist, system_resolver)
    except CallbackRefused as exc:
        raise InvokeError(ApiErrorCode.URI_REFUSED, str(exc).replace("callback ", "", 1)) from exc
    except OSError:
        pass  # unresolvable: the fetch fails and says so in the image's result
    return "http"


def uri_item(uri: str, kind: str, settings: Settings, invoker: Invoker) -> InputItem:
    """An item that reads ``uri`` (checked by ``check_uri``) when the pipeline loads it."""
    if kind == "s3":
        return object_item(invoker.storage, uri, settings.max_image_bytes)
    return InputItem(uri, lambda: fetch_url(invoker.http, uri, settings.max_image_bytes))


def fetch_url(client: httpx.Client, url: str, max_bytes: int) -> bytes:
    """GET ``url`` (no redirects), at most ``max_bytes``; ``ImageFailure`` says what failed."""
    try:
        with client.stream("GET", url) as response:
            status = response.status_code
            if status == 404 or status == 410:
                raise ImageFailure(ErrorCode.NOT_FOUND, f"{url} answered {status}")
            if status in (401, 403):
                raise ImageFailure(ErrorCode.FORBIDDEN, f"{url} answered {status}")
            if 300 <= status < 400:
                raise ImageFailure(
                    ErrorCode.FETCH_FAILED,
                    f"{url} answered {status} (a redirect; redirects are not followed)",
                )
            if status != 200:
                raise ImageFailure(ErrorCode.FETCH_FAILED, f"{url} answered {status}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ImageFailure(
                    ErrorCode.TOO_LARGE,
                    f"{url} is {declared} bytes, more than the limit of {max_bytes}",
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ImageFailure(
                        ErrorCode.TOO_LARGE, f"{url} is more than the limit of {max_bytes} bytes"
                    )
    except httpx.HTTPError as exc:
        raise ImageFailure(ErrorCode.FETCH_FAILED, f"{url}: {type(exc).__name__}: {exc}") from exc
    if not body:
        raise ImageFailure(ErrorCode.EMPTY_FILE, f"{url} has zero bytes")
    return bytes(body)


def fetch_client(settings: Settings) -> httpx.Client:
    """The client of URI fetches: bounded timeouts, no redirects, no environment proxies."""
    timeout = settings.serve_fetch_timeout_s
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": "synthdetect-invoke"},
    )
