"""*Datasets*: create one; upload files, a folder, zip/tar archives; or point at an S3 prefix.

Uploads are multipart forms (CSRF token in the query string, as the gate reads
it for multipart bodies). Labels come from a chosen label, from folder names
(``real/x.jpg``), or none: images may arrive unlabelled and be labelled later.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from worker.errors import ImageFailure, StorageError
from worker.serve.console.state import back_to, console_of, username
from worker.serve.console.thumbnails import thumbnail_jpeg
from worker.serve.datasets import (
    DEFAULT_LABELS,
    AddReport,
    DatasetError,
    DatasetStore,
    LabelRule,
    UploadedFile,
)
from worker.serve.pages import render

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
PAGE_IMAGES = 120
"""Images a dataset page shows (newest first); the label and review pages show the rest."""
THUMBNAIL_PX = 128
MAX_UPLOAD_BYTES = 4 * 2**30
"""Largest upload request: the form spools files to temporary disk before they are read."""
MAX_UPLOAD_FILES = 20_000
"""Files one upload (many files, or a folder) may carry; an archive may hold more."""


def routes() -> list[BaseRoute]:
    return [
        Route("/datasets", datasets_page, methods=["GET"]),
        Route("/datasets", create_dataset, methods=["POST"]),
        Route("/datasets/{name}", dataset_page, methods=["GET"]),
        Route("/datasets/{name}/upload", upload, methods=["POST"]),
        Route("/datasets/{name}/prefix", add_prefix, methods=["POST"]),
        Route("/datasets/{name}/images/{key}", image, methods=["GET"]),
    ]


async def datasets_page(request: Request) -> Response:
    console = console_of(request)
    return render(
        request,
        "console/datasets.html",
        {
            "datasets": console.datasets.views(),
            "default_model": console.services.settings.default_model,
            "msg": request.query_params.get("msg"),
            "err": request.query_params.get("err"),
        },
    )


async def create_dataset(request: Request) -> Response:
    console = console_of(request)
    async with request.form() as form:
        name = str(form.get("name", "")).strip()
        given = str(form.get("labels") or ",".join(DEFAULT_LABELS))
        labels = [part.strip() for part in given.split(",") if part.strip()]
        model = str(form.get("model") or console.services.settings.default_model).strip()
    try:
        await anyio.to_thread.run_sync(
            lambda: console.datasets.create(name, username(request), labels, model)
        )
    except DatasetError as exc:
        return back_to("/datasets", error=str(exc))
    return back_to(f"/datasets/{name}", f"dataset {name} created: now add images")


async def dataset_page(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["name"]
    try:
        dataset = console.datasets.get(name)
    except DatasetError as exc:
        raise HTTPException(404, str(exc)) from exc
    view = console.datasets.view(dataset)
    items = console.datasets.store.items(dataset.id, order="recent", limit=PAGE_IMAGES)
    return render(
        request,
        "console/dataset.html",
        {
            "view": view,
            "items": items,
            "shown": len(items),
            "msg": request.query_params.get("msg"),
            "err": request.query_params.get("err"),
            "rejected": request.query_params.getlist("rejected"),
        },
    )


async def upload(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["name"]
    user = username(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        return back_to(
            f"/datasets/{name}",
            error=f"upload refused: more than {MAX_UPLOAD_BYTES // 2**30} GiB in one request; "
            "split it, or put the images in S3 and add the prefix",
        )
    try:
        # Each file of a folder comes with its path in a "paths" field (see console.js).
        limit = MAX_UPLOAD_FILES
        async with request.form(max_files=limit, max_fields=limit + 20) as form:
            mode = str(form.get("labels", "none"))
            fixed = str(form.get("label", "")).strip() or None
            rule = (
                LabelRule(from_folders=True)
                if mode == "folders"
                else LabelRule(label=fixed)
                if mode == "fixed"
                else LabelRule()
            )
            if mode == "fixed" and fixed is None:
                return back_to(f"/datasets/{name}", error="choose the label to give every image")
            uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
            paths = [str(p) for p in form.getlist("paths")]
            if not uploads:
                return back_to(f"/datasets/{name}", error="choose files, a folder or an archive")
            report = await anyio.to_thread.run_sync(
                lambda: _add_uploads(console.datasets, name, uploads, paths, rule, user)
            )
    except DatasetError as exc:
        return back_to(f"/datasets/{name}", error=str(exc))
    except HTTPException as exc:  # multipart limits (files, fields, part size)
        return back_to(f"/datasets/{name}", error=f"upload refused: {exc.detail}")
    return _reported(name, report)


def _add_uploads(
    datasets: DatasetStore,
    name: str,
    uploads: list[UploadFile],
    paths: list[str],
    rule: LabelRule,
    user: str,
) -> AddReport:
    """Archives member by member, other files as images; one report for all."""
    total = AddReport()
    # A folder upload names each file by its path; the browser sends it as the file name,
    # and the page's script also sends it in "paths" (some browsers strip folders).
    names = [
        paths[i] if i < len(paths) and paths[i] else (u.filename or "")
        for i, u in enumerate(uploads)
    ]
    plain = [
        (n, u)
        for n, u in zip(names, uploads, strict=True)
        if not n.lower().endswith(ARCHIVE_SUFFIXES)
    ]
    for filename, archive in zip(names, uploads, strict=True):
        if filename.lower().endswith(ARCHIVE_SUFFIXES):
            _merge(total, datasets.add_archive(name, filename, archive.file, rule, user))
    if plain:
        files = _read_files(plain, datasets.limits.max_bytes)
        _merge(total, datasets.add_files(name, files, rule, user))
    return total


def _read_files(files: list[tuple[str, UploadFile]], max_bytes: int) -> Iterator[UploadedFile]:
    for filename, upload in files:
        upload.file.seek(0)
        data = upload.file.read(max_bytes + 1)
        yield UploadedFile(filename, data)


def _merge(total: AddReport, part: AddReport) -> None:
    total.added += part.added
    total.duplicates += part.duplicates
    total.labelled += part.labelled
    total.rejected += part.rejected


def _reported(name: str, report: AddReport) -> Response:
    rejected = [f"{file}: {reason}" for file, reason in report.rejected[:20]]
    more = len(report.rejected) - len(rejected)
    if more > 0:
        rejected.append(f"... and {more} more")
    return back_to(f"/datasets/{name}", report.describe(), rejected=rejected or None)


async def add_prefix(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["name"]
    async with request.form() as form:
        prefix = str(form.get("prefix", "")).strip()
        from_folders = form.get("labels") == "folders"
    try:
        report = await anyio.to_thread.run_sync(
            lambda: console.datasets.add_prefix(name, prefix, from_folders, username(request))
        )
    except (DatasetError, StorageError) as exc:
        return back_to(f"/datasets/{name}", error=str(exc))
    return _reported(name, report)


async def image(request: Request) -> Response:
    """A dataset image's preview (JPEG, re-encoded; ``?size=`` up to 512 px)."""
    console = console_of(request)
    name, key = request.path_params["name"], request.path_params["key"]
    asked = request.query_params.get("size", "")
    size = min(max(int(asked), 16), 512) if asked.isdigit() else THUMBNAIL_PX

    def load() -> bytes:
        dataset = console.datasets.get(name)
        return thumbnail_jpeg(
            console.datasets.image_bytes(dataset, key), size, console.datasets.limits
        )

    try:
        jpeg = await anyio.to_thread.run_sync(load)
    except DatasetError as exc:
        raise HTTPException(404, str(exc)) from exc
    except (ImageFailure, StorageError) as exc:
        raise HTTPException(422, f"no preview: {exc}") from exc
    # Uploaded images are named by their content: a preview never changes.
    return Response(
        jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
    )
