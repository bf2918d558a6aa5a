"""*Review*: a model version's predictions on a dataset, sorted and filtered, labels fixable.

The selection is ``worker.review.views.select`` (the same code as ``synthdetect
review``): sort by confidence (least sure first, or most) or recency (newest
images first), filter by predicted label, true label, agreement and domain; the
console adds "unlabelled only". Each row has a label form posting to the label
route, so a fixed label goes into the dataset for the next retrain and the page
comes back with the same filters. The numbers at the top cover every labelled
image (``review_metrics``), never only the selection.

Images a version was trained on look better than they are: for an honest
measure, read the version's cross-validation and held-out numbers (Train, Models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contracts import ImageResult, ModelId
from worker.errors import ModelError, StorageError
from worker.review.metrics import review_metrics, summary_rows
from worker.review.views import (
    DOMAIN_FILTERS,
    SORT_ORDERS,
    DomainFilter,
    ReviewQuery,
    SortOrder,
    domain_state,
    select,
)
from worker.serve.console.state import Console, console_of
from worker.serve.datasets import DatasetError, labels_of, model_of
from worker.serve.db import Dataset, DatasetItem
from worker.serve.pages import render

ROWS = 200
"""Rows one page lists at most."""


def routes() -> list[BaseRoute]:
    return [Route("/review", review_page, methods=["GET"])]


@dataclass(frozen=True)
class ReviewRow:
    result: ImageResult
    item: DatasetItem
    domain: str


def _query(params: Any) -> tuple[ReviewQuery, bool]:
    sort = params.get("sort") or "confidence"
    agree = {"agree": True, "disagree": False}.get(params.get("agree") or "")
    domain = params.get("domain") or None
    query = ReviewQuery(
        sort=cast(SortOrder, sort if sort in SORT_ORDERS else "confidence"),
        predicted=params.get("predicted") or None,
        true=params.get("true") or None,
        agree=agree,
        domain=cast(DomainFilter, domain) if domain in DOMAIN_FILTERS else None,
        limit=ROWS,
    )
    return query, params.get("unlabelled") == "1"


def _review(
    console: Console, dataset: Dataset, version: str | None, query: ReviewQuery, unlabelled: bool
) -> dict[str, Any]:
    name = model_of(dataset)
    predictions = console.predictions
    model: ModelId | None
    if version:
        model = ModelId(name=name, version=version)
    else:
        model = predictions.first_available([name, console.services.settings.default_model])
    if model is None:
        raise ModelError(f"no production version of {name!r} to review with: train one first")
    items = list(reversed(console.datasets.items(dataset)))  # oldest first: "recency" reverses
    by_key = {item.key: item for item in items}
    results = predictions.predict(dataset, model, items)
    ordered = [results[item.key] for item in items if item.key in results]
    keys = {id(results[item.key]): item.key for item in items if item.key in results}
    pool = [r for r in ordered if r.true_label is None] if unlabelled else ordered
    chosen = select(pool, query)
    rows = [
        ReviewRow(r, by_key[keys[id(r)]], domain_state(r)) for r in chosen.images if id(r) in keys
    ]
    metrics = review_metrics([r for r in ordered if r.true_label is not None])
    return {
        "model": model,
        "rows": rows,
        "total": len(ordered),
        "selected": len(pool) if not query.predicted and query.agree is None else None,
        "summary": summary_rows(metrics) if metrics.with_truth else [],
        "disagreements": sum(
            1 for r in ordered if r.true_label is not None and r.label not in (None, r.true_label)
        ),
    }


async def review_page(request: Request) -> Response:
    console = console_of(request)
    params = request.query_params
    views = console.datasets.views()
    name = params.get("dataset") or (views[0].name if views else "")
    context: dict[str, Any] = {
        "datasets": views,
        "dataset": None,
        "params": params,
        "sorts": SORT_ORDERS,
        "domains": DOMAIN_FILTERS,
        "msg": params.get("msg"),
        "err": params.get("err"),
        "here": request.url.path + ("?" + request.url.query if request.url.query else ""),
    }
    if not name:
        return render(request, "console/review.html", context)
    try:
        dataset = console.datasets.get(name)
        query, unlabelled = _query(params)
        versions = console.services.registry.list_versions(model_of(dataset))
        context.update(
            dataset=dataset,
            labels=labels_of(dataset),
            versions=list(reversed(versions)),
            version=params.get("version") or "",
        )
        context.update(
            await anyio.to_thread.run_sync(
                _review, console, dataset, params.get("version") or None, query, unlabelled
            )
        )
    except (DatasetError, ModelError, StorageError, ValueError) as exc:
        context["err"] = str(exc)
    return render(request, "console/review.html", context)
