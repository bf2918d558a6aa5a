"""*Invoke*: drop an image, see the answer and why (scores, domain check, provenance).

The image goes through the same code as ``POST /v1/invoke`` (``Services.invoke``, the
invoke API's ``Invoker``, in-process): the classify pipeline on the process's shared engine in
the urgent lane, so it shares batches with API traffic and follows ``production``.
"""

from __future__ import annotations

import base64

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contracts import ImageResult, ModelRef
from worker.errors import ImageFailure
from worker.serve.console.state import console_of
from worker.serve.console.thumbnails import thumbnail_jpeg
from worker.serve.invoke import InvokeError, bytes_item
from worker.serve.pages import render
from worker.serve.services import Services


def routes() -> list[BaseRoute]:
    return [Route("/invoke", invoke_page, methods=["GET", "POST"])]


async def invoke_page(request: Request) -> Response:
    console = console_of(request)
    services = console.services
    context: dict[str, object] = {"model": services.settings.default_model}
    if request.method == "POST":
        max_bytes = services.limits.max_bytes
        async with request.form(max_files=1, max_fields=5) as form:
            upload = form.get("image")
            model = str(form.get("model") or services.settings.default_model)
            if not isinstance(upload, UploadFile) or not upload.filename:
                return render(
                    request,
                    "console/invoke.html",
                    {**context, "error": "choose an image first"},
                    400,
                )
            data = await upload.read(max_bytes + 1)
            name = upload.filename
        if len(data) > max_bytes:
            error = f"{name} is larger than the limit of {max_bytes} bytes"
            return render(request, "console/invoke.html", {**context, "error": error}, 413)
        try:
            result = await anyio.to_thread.run_sync(invoke_bytes, services, name, data, model)
        except InvokeError as exc:
            return render(
                request, "console/invoke.html", {**context, "error": exc.message}, exc.status
            )
        context.update(
            model=model,
            result=result,
            name=name,
            preview=_preview(data, result, services),
            scores=sorted((result.scores or {}).items(), key=lambda kv: -kv[1]),
        )
    return render(request, "console/invoke.html", context)


def invoke_bytes(services: Services, name: str, data: bytes, model: str) -> ImageResult:
    """One image's ``ImageResult``, exactly as the invoke API answers it."""
    (result,) = services.invoke([bytes_item(name, data)], ModelRef(name=model))
    return result


def _preview(data: bytes, result: ImageResult, services: Services) -> str | None:
    """A data: URL of the image for the page, only when it decoded (so it is an image)."""
    if result.error is not None and result.label is None and not result.scores:
        return None
    try:
        jpeg = thumbnail_jpeg(data, 256, services.limits)
    except ImageFailure:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
