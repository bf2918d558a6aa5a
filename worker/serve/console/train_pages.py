"""*Train*: start a retrain with a budget, watch it live (server-sent events), read the result.

``/train`` has the form and the run history; ``/train/{id}`` shows one run: while
it trains, its progress lines arrive over ``/train/{id}/events`` (an
``EventSource``; each event's id is its index, so a reconnecting browser resumes
with ``Last-Event-ID``), and a ``done`` event makes the page reload into the
result: cross-validation and held-out metrics from the new version's card, the
confusion matrix and reliability diagram of the held-out images, and the gate's
decision against production.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from contracts import ModelCard
from worker.errors import ModelError, StorageError
from worker.serve.console.state import back_to, console_of, username
from worker.serve.datasets import DatasetError
from worker.serve.pages import render
from worker.serve.training_runs import FIGURES, RunRecord

HEARTBEAT_S = 15.0
"""A comment line at least this often keeps proxies from closing an idle stream."""


def routes() -> list[BaseRoute]:
    return [
        Route("/train", train_page, methods=["GET"]),
        Route("/train", start, methods=["POST"]),
        Route("/train/{run_id}", run_page, methods=["GET"]),
        Route("/train/{run_id}/events", events, methods=["GET"]),
        Route("/train/{run_id}/figures/{figure}", figure, methods=["GET"]),
    ]


async def train_page(request: Request) -> Response:
    console = console_of(request)
    return render(
        request,
        "console/train.html",
        {
            "datasets": console.datasets.views(),
            "chosen": request.query_params.get("dataset"),
            "runs": console.runs.history(),
            "running": console.runs.running(),
            "err": request.query_params.get("err"),
        },
    )


async def start(request: Request) -> Response:
    console = console_of(request)
    async with request.form() as form:
        dataset = str(form.get("dataset", ""))
        promotion = str(form.get("promotion", "if_not_worse"))
        try:
            budget_s = float(str(form.get("budget_s", "60")))
            folds = int(str(form.get("folds", "5")))
        except ValueError:
            return back_to("/train", error="the budget and folds must be numbers", dataset=dataset)
    try:
        console.writable_registry()
        run = console.runs.start(dataset, username(request), budget_s, folds, promotion)
    except (DatasetError, ModelError) as exc:
        return back_to("/train", error=str(exc), dataset=dataset)
    return back_to(f"/train/{run.id}")


def _run_or_404(request: Request) -> RunRecord:
    try:
        return console_of(request).runs.get(request.path_params["run_id"])
    except DatasetError as exc:
        raise HTTPException(404, str(exc)) from exc


async def run_page(request: Request) -> Response:
    console = console_of(request)
    run = _run_or_404(request)
    card: ModelCard | None = None
    if run.summary is not None and run.summary.model is not None:
        try:
            card = await anyio.to_thread.run_sync(
                console.services.registry.read_card, run.summary.model
            )
        except (ModelError, StorageError):
            card = None
    return render(
        request,
        "console/run.html",
        {
            "run": run,
            "card": card,
            "cv": card.metrics.get("cv") if card else None,
            "heldout": card.metrics.get("heldout") if card else None,
        },
    )


async def events(request: Request) -> Response:
    """The run's progress as ``text/event-stream``: one ``data`` line per event, then ``done``."""
    console = console_of(request)
    run = _run_or_404(request)
    try:
        since = int(request.headers.get("last-event-id") or request.query_params.get("since") or 0)
    except ValueError:
        since = 0

    async def stream() -> AsyncIterator[str]:
        nonlocal since
        while True:
            new, status = await anyio.to_thread.run_sync(
                console.runs.wait_events, run.id, since, HEARTBEAT_S
            )
            for event in new:
                since += 1
                yield f"id: {since}\ndata: {json.dumps(event.model_dump())}\n\n"
            if status != "running":
                yield f"event: done\ndata: {json.dumps({'status': status})}\n\n"
                return
            if not new:
                yield ": still training\n\n"
            if await request.is_disconnected():
                return

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def figure(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["figure"]
    if name not in FIGURES:
        raise HTTPException(404, f"no figure {name}")
    try:
        png = await anyio.to_thread.run_sync(
            console.runs.figure, request.path_params["run_id"], name
        )
    except DatasetError as exc:
        raise HTTPException(404, str(exc)) from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
