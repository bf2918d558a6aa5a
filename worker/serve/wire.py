"""The invoke API's request and response bodies (pydantic), shared by handlers and OpenAPI."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from contracts import ImageResult


class InvokeUriRequest(BaseModel):
    """``POST /v1/invoke`` with a JSON body: the image at ``uri``."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(description="s3://bucket/key, or an http(s):// URL the SSRF guard accepts.")


class InvokeBatchUriRequest(BaseModel):
    """``POST /v1/invoke/batch`` with a JSON body: the images at ``uris``."""

    model_config = ConfigDict(extra="forbid")

    uris: list[str] = Field(
        min_length=1, description="s3:// or http(s):// addresses, one result each, in order."
    )


class BatchResponse(BaseModel):
    """One ``ImageResult`` per image, in the order they were sent."""

    results: list[ImageResult]


class ApiError(BaseModel):
    code: str = Field(description="An ApiErrorCode, or for a failed image a contracts ErrorCode.")
    message: str = Field(description="What went wrong, for people.")


class ErrorResponse(BaseModel):
    """The body of every refused request."""

    error: ApiError
