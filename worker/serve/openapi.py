"""The invoke API's OpenAPI 3.1 document, built from the same pydantic models the API uses.

Request and response bodies are the models' JSON Schemas (``ImageResult`` is the
contract a job's results use), so the document cannot drift from what the
handlers parse and answer; a test validates real responses against it. Limits
are named by their settings rather than their values, so the published schema
(``GET /v1/openapi.json``) and ``docs/api.md`` are the same on every deployment.
"""

from __future__ import annotations

import ast
import inspect
import itertools
from typing import Any

from pydantic.json_schema import models_json_schema

from contracts import ErrorCode, ImageResult
from worker.serve.invoke import API_ERROR_STATUS, IMAGE_ERROR_STATUS, ApiErrorCode
from worker.serve.wire import BatchResponse, ErrorResponse, InvokeBatchUriRequest, InvokeUriRequest

REF = "#/components/schemas/{model}"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")


def error_codes() -> list[tuple[str, int, str]]:
    """(code, HTTP status, meaning) of every error the API answers, request errors first."""
    rows = [(code.value, API_ERROR_STATUS[code], _doc(ApiErrorCode, code)) for code in ApiErrorCode]
    rows += [
        (code.value, status, _doc(ErrorCode, code)) for code, status in IMAGE_ERROR_STATUS.items()
    ]
    return rows


def _doc(enum: type[Any], member: Any) -> str:
    """The string under a member in the enum's source: its documentation (members of a
    ``StrEnum`` cannot carry a ``__doc__`` of their own)."""
    tree = ast.parse(inspect.getsource(enum))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == member.name
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            return " ".join(str(following.value.value).split())
    return ""


def _schemas() -> dict[str, Any]:
    _, serialization = models_json_schema(
        [
            (ImageResult, "serialization"),
            (BatchResponse, "serialization"),
            (ErrorResponse, "serialization"),
        ],
        ref_template=REF,
    )
    _, validation = models_json_schema(
        [(InvokeUriRequest, "validation"), (InvokeBatchUriRequest, "validation")],
        ref_template=REF,
    )
    schemas: dict[str, Any] = {**serialization["$defs"], **validation["$defs"]}
    schemas["ApiError"]["properties"]["code"]["enum"] = [code for code, _, _ in error_codes()]
    return dict(sorted(schemas.items()))


def _errors(codes: set[str]) -> dict[str, Any]:
    """The error responses of an operation that may answer ``codes``."""
    by_status: dict[int, list[str]] = {}
    for code, status, _ in error_codes():
        if code in codes:
            by_status.setdefault(status, []).append(code)
    return {
        str(status): {
            "description": "Refused: " + ", ".join(f"`{code}`" for code in by_status[status]),
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}
            },
        }
        for status in sorted(by_status)
    }


_MODEL_PARAMETER = {
    "name": "model",
    "in": "query",
    "required": False,
    "description": "`name` or `name@version`; default SYNTHDETECT_DEFAULT_MODEL at its "
    "`production` version.",
    "schema": {"type": "string"},
}


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``/v1``."""
    binary = {"type": "string", "format": "binary"}
    routing = {ApiErrorCode.NO_SUCH_ENDPOINT.value, ApiErrorCode.METHOD_NOT_ALLOWED.value}
    every_code = {code for code, _, _ in error_codes()} - routing  # not answers of a POST here
    request_codes = {code.value for code in ApiErrorCode} - routing
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "synthdetect invoke API",
            "version": "1",
            "description": "Classify images synchronously with the model a synthdetect "
            "deployment serves: the same ImageResult a classify job writes (label, calibrated "
            "confidence and scores, domain check, provenance, model version).",
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/invoke": {
                "post": {
                    "operationId": "invoke",
                    "summary": "Classify one image",
                    "description": "The image is the raw body (any image content type), one "
                    "multipart file part, or JSON naming its URI. Answers its ImageResult; an "
                    "out-of-domain abstention (label null, error code out_of_domain) is a 200 "
                    "answer. When the image itself fails (not an image, too large, ...) the "
                    "answer is an error body with the image's code. Body at most "
                    "SYNTHDETECT_SERVE_MAX_REQUEST_BYTES; each image at most "
                    "SYNTHDETECT_MAX_IMAGE_BYTES and SYNTHDETECT_MAX_IMAGE_PIXELS.",
                    "parameters": [_MODEL_PARAMETER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            **{kind: {"schema": binary} for kind in IMAGE_TYPES},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"image": binary},
                                    "required": ["image"],
                                }
                            },
                            "application/json": {
                                "schema": {"$ref": REF.format(model="InvokeUriRequest")}
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The image's result.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": REF.format(model="ImageResult")}
                                }
                            },
                        },
                        **_errors(every_code),
                    },
                }
            },
            "/v1/invoke/batch": {
                "post": {
                    "operationId": "invokeBatch",
                    "summary": "Classify several images",
                    "description": "Up to SYNTHDETECT_SERVE_MAX_BATCH_IMAGES images as "
                    "multipart file parts or JSON URIs. Answers one ImageResult per image in "
                    "order; an image that fails has its error in its result, as in a job's "
                    "results.",
                    "parameters": [_MODEL_PARAMETER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"images": {"type": "array", "items": binary}},
                                    "required": ["images"],
                                }
                            },
                            "application/json": {
                                "schema": {"$ref": REF.format(model="InvokeBatchUriRequest")}
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One result per image.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": REF.format(model="BatchResponse")}
                                }
                            },
                        },
                        **_errors(request_codes),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `synthdetect apikeys create NAME` "
                    "(`sdk_<id>_<secret>`).",
                }
            },
            "schemas": _schemas(),
        },
    }
