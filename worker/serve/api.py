"""The invoke API: ``POST /v1/invoke``, ``POST /v1/invoke/batch``, ``GET /v1/openapi.json``.

A request carries its images one of three ways, told apart by ``Content-Type``:

- ``multipart/form-data``: file parts (any field name); a result's ``uri`` is
  ``upload:<file name>``;
- ``application/json``: ``{"uri": "s3://..."}`` (batch: ``{"uris": [...]}``);
- any other type (``image/jpeg``, ``application/octet-stream``, ...): the raw
  body is the image (single invoke only); its result's ``uri`` is ``upload:body``.

``?model=name`` or ``?model=name@version`` picks the model (default
``SYNTHDETECT_DEFAULT_MODEL`` at its ``production`` version).

A single invoke answers the ``ImageResult`` (200; an out-of-domain abstention is
an answer too) or, when its image failed, the error body with the image's code
and a 4xx/5xx status (``invoke.IMAGE_ERROR_STATUS``). A batch answers 200 with
one result per image, each with its own error if it failed, as in a job's
results. Requests refused as a whole get the error body with an
``ApiErrorCode``. The body is read at most to ``SYNTHDETECT_SERVE_MAX_REQUEST_BYTES``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message

from contracts import ErrorCode, ImageResult, ModelRef
from worker.classify.inputs import InputItem
from worker.metrics import record_results
from worker.serve.auth import api_error
from worker.serve.invoke import (
    IMAGE_ERROR_STATUS,
    ApiErrorCode,
    InvokeError,
    Invoker,
    bytes_item,
    check_uri,
    uri_item,
)
from worker.serve.openapi import openapi_schema
from worker.serve.services import Services, services_of
from worker.serve.wire import InvokeBatchUriRequest, InvokeUriRequest

MAX_FORM_FILES = 10_000
"""Parts a multipart body may hold before parsing stops (the byte limit bounds it first)."""


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/invoke", invoke, methods=["POST"]),
        Route("/v1/invoke/batch", invoke_batch, methods=["POST"]),
        Route("/v1/openapi.json", openapi, methods=["GET"]),
    ]


async def invoke(request: Request) -> Response:
    """One image to one ``ImageResult``."""
    services = services_of(request)
    try:
        model = _model(request, services)
        items = await _read_items(request, services, batch=False)
        (result,) = await _run(services, items, model)
    except InvokeError as exc:
        return api_error(exc.status, exc.code.value, exc.message)
    if result.error is not None and result.error.code != ErrorCode.OUT_OF_DOMAIN:
        return api_error(
            IMAGE_ERROR_STATUS.get(result.error.code, 422),
            result.error.code.value,
            result.error.message,
        )
    return JSONResponse(result.model_dump(mode="json", exclude_none=True))


async def invoke_batch(request: Request) -> Response:
    """Up to ``SYNTHDETECT_SERVE_MAX_BATCH_IMAGES`` images to one ``ImageResult`` each."""
    services = services_of(request)
    try:
        model = _model(request, services)
        items = await _read_items(request, services, batch=True)
        results = await _run(services, items, model)
    except InvokeError as exc:
        return api_error(exc.status, exc.code.value, exc.message)
    body = {"results": [r.model_dump(mode="json", exclude_none=True) for r in results]}
    return JSONResponse(body)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema())


# --- reading a request --------------------------------------------------------------------


def _model(request: Request, services: Services) -> ModelRef:
    text = request.query_params.get("model")
    if not text:
        return services.default_model
    try:
        return ModelRef.parse(text)
    except ValidationError as exc:
        raise InvokeError(
            ApiErrorCode.INVALID_REQUEST, f"model {text!r}: {_first_error(exc)}"
        ) from exc


async def _run(services: Services, items: list[InputItem], model: ModelRef) -> list[ImageResult]:
    results = await anyio.to_thread.run_sync(services.invoke, items, model)
    record_results(results)
    return results


async def _read_items(request: Request, services: Services, *, batch: bool) -> list[InputItem]:
    settings = services.settings
    limit = settings.serve_max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    bounded = _bounded(request, limit)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        items = await _multipart_items(bounded, limit)
    elif content_type == "application/json":
        uris = await _json_uris(bounded, limit, batch)
        kinds = [await anyio.to_thread.run_sync(check_uri, uri, settings) for uri in uris]
        invoker = Invoker(services.engine, settings, services.storage, services.fetch)
        items = [
            uri_item(uri, kind, settings, invoker) for uri, kind in zip(uris, kinds, strict=True)
        ]
    elif content_type == "application/x-www-form-urlencoded" or batch:
        raise InvokeError(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"{content_type or 'a body without a content type'} is not taken here: send "
            + (
                'multipart/form-data files or JSON {"uris": [...]}'
                if batch
                else 'the image bytes, a multipart/form-data file, or JSON {"uri": ...}'
            ),
        )
    else:
        data = await _body(bounded, limit)
        if not data:
            raise InvokeError(ApiErrorCode.NO_IMAGE, "the request body is empty")
        items = [bytes_item("upload:body", data)]
    if not items:
        raise InvokeError(ApiErrorCode.NO_IMAGE, "the request carries no image")
    most = settings.serve_max_batch_images if batch else 1
    if len(items) > most:
        if not batch:
            raise InvokeError(
                ApiErrorCode.TOO_MANY_IMAGES,
                f"{len(items)} images sent; /v1/invoke takes one (use /v1/invoke/batch)",
            )
        raise InvokeError(
            ApiErrorCode.TOO_MANY_IMAGES,
            f"{len(items)} images sent; a batch takes at most {most} "
            "(SYNTHDETECT_SERVE_MAX_BATCH_IMAGES)",
        )
    return items


class _BodyTooLarge(Exception):
    """Raised from inside the body stream once it passes the limit."""


def _too_large(limit: int) -> InvokeError:
    return InvokeError(
        ApiErrorCode.PAYLOAD_TOO_LARGE,
        f"the request body is larger than {limit} bytes (SYNTHDETECT_SERVE_MAX_REQUEST_BYTES)",
    )


def _bounded(request: Request, limit: int) -> Request:
    """The request, with a body stream that raises ``_BodyTooLarge`` past ``limit`` bytes."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
        return message

    return Request(request.scope, receive)


async def _body(request: Request, limit: int) -> bytes:
    try:
        return await request.body()
    except _BodyTooLarge:
        raise _too_large(limit) from None


async def _multipart_items(request: Request, limit: int) -> list[InputItem]:
    try:
        async with request.form(max_files=MAX_FORM_FILES) as form:
            items: list[InputItem] = []
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    name = value.filename or f"part-{len(items)}"
                    items.append(bytes_item(f"upload:{name}", await value.read()))
            return items
    except _BodyTooLarge:
        raise _too_large(limit) from None
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body
        raise InvokeError(
            ApiErrorCode.BAD_REQUEST, f"malformed multipart body: {exc.detail}"
        ) from exc


async def _json_uris(request: Request, limit: int, batch: bool) -> list[str]:
    raw = await _body(request, limit)
    try:
        data: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvokeError(ApiErrorCode.BAD_REQUEST, f"the body is not JSON: {exc}") from exc
    try:
        if batch:
            return InvokeBatchUriRequest.model_validate(data).uris
        return [InvokeUriRequest.model_validate(data).uri]
    except ValidationError as exc:
        raise InvokeError(ApiErrorCode.INVALID_REQUEST, _first_error(exc)) from exc


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{where}: {error['msg']}"
