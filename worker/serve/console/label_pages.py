"""*Label*: the uncertain-first queue, one image at a time (keyboard) or a selection at once.

``/label`` lists datasets with images to label; ``/label/{name}`` shows the queue
(``worker.serve.labeling``): the image the production model is least sure of,
with its guess, a button per label (keys: each label's first letter when they
differ, digits always, space to skip), and below it the next images as a grid
to select and label in bulk. ``POST /label/{name}`` takes one or many ``key``
fields and a ``label`` (empty: remove the label) and returns to the queue.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from worker.errors import ModelError, StorageError
from worker.serve.console.state import back_to, console_of, local_path, username
from worker.serve.datasets import DatasetError, labels_of
from worker.serve.labeling import LabelQueue, label_queue
from worker.serve.pages import render

GRID = 48
"""Queue images shown for bulk labelling."""


def routes() -> list[BaseRoute]:
    return [
        Route("/label", label_index, methods=["GET"]),
        Route("/label/{name}", label_page, methods=["GET"]),
        Route("/label/{name}", set_labels, methods=["POST"]),
    ]


async def label_index(request: Request) -> Response:
    console = console_of(request)
    return render(request, "console/label_index.html", {"datasets": console.datasets.views()})


async def label_page(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["name"]
    try:
        skip = max(int(request.query_params.get("skip", "0") or 0), 0)
    except ValueError:
        skip = 0
    try:
        dataset = console.datasets.get(name)
    except DatasetError as exc:
        raise HTTPException(404, str(exc)) from exc

    def queue() -> LabelQueue:
        unlabelled = console.datasets.items(dataset, labelled=False)
        return label_queue(
            dataset, unlabelled, console.predictions, console.services.settings.default_model
        )

    error = request.query_params.get("err")
    try:
        ordered = await anyio.to_thread.run_sync(queue)
    except (ModelError, StorageError) as exc:
        ordered, error = LabelQueue([], None), f"the queue could not be scored: {exc}"
    skip = min(skip, max(len(ordered) - 1, 0))
    labels = labels_of(dataset)
    current = ordered.entries[skip] if ordered.entries else None
    return render(
        request,
        "console/label.html",
        {
            "view": console.datasets.view(dataset),
            "queue": ordered,
            "current": current,
            "skip": skip,
            "grid": ordered.entries[skip + 1 : skip + 1 + GRID] if current else [],
            "shortcuts": shortcuts(labels),
            "msg": request.query_params.get("msg"),
            "err": error,
        },
    )


def shortcuts(labels: list[str]) -> list[tuple[str, str, str]]:
    """(label, letter key or '', digit key) for each label; letters only when unambiguous."""
    firsts = [label[0].lower() for label in labels]
    return [
        (
            label,
            first if firsts.count(first) == 1 and first not in "0123456789 " else "",
            str(i + 1) if i < 9 else "",
        )
        for i, (label, first) in enumerate(zip(labels, firsts, strict=True))
    ]


async def set_labels(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["name"]
    async with request.form() as form:
        keys = [str(k) for k in form.getlist("key")]
        label = str(form.get("label", "")).strip() or None
        skip = str(form.get("skip", "0"))
        back = str(form.get("back", ""))
    target = local_path(back) or f"/label/{name}"
    if not keys:
        return back_to(target, error="select at least one image", skip=skip)
    try:
        changed = await anyio.to_thread.run_sync(
            lambda: console.datasets.set_labels(name, keys, label, username(request))
        )
    except DatasetError as exc:
        return back_to(target, error=str(exc), skip=skip)
    said = (
        f"labelled {changed} image{'s' if changed != 1 else ''} {label}"
        if label
        else (f"removed the label of {changed} image{'s' if changed != 1 else ''}")
    )
    if target != f"/label/{name}":
        return back_to_url(target, said)
    return back_to(target, said, skip=skip if skip != "0" else None)


def back_to_url(target: str, message: str) -> Response:
    """Return to a page that has its own query string (the review's filters)."""
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("msg", "err")]
    query.append(("msg", message))
    return RedirectResponse(f"{parts.path}?{urlencode(query)}", status_code=303)
