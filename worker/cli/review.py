"""``synthdetect review``: look at results the way a reviewer does.

Reads classify results (files, s3:// objects or results prefixes) or a retrain run's
cross-validation predictions, joins known labels, filters and sorts, prints the
selected rows and the metrics to stdout and, with ``--html``, writes the
self-contained review report. Filters choose which images are listed (in the table
and on the page, in the same order); the metrics on both always cover every result,
and both say so.
"""

from __future__ import annotations

from typing import cast

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contracts import ImageResult
from worker.errors import SynthdetectError
from worker.imaging import ImageLimits
from worker.logs import configure_logging
from worker.review.metrics import ReviewMetrics, review_metrics, summary_rows
from worker.review.report import (
    DEFAULT_MAX_THUMBNAILS,
    REPORT_CONTENT_TYPE,
    Listing,
    render_report,
    scope_sentence,
)
from worker.review.views import (
    DOMAIN_FILTERS,
    SORT_ORDERS,
    DomainFilter,
    Review,
    ReviewQuery,
    SortOrder,
    agreement,
    domain_state,
    load_labels,
    load_results,
    select,
    with_true_labels,
)
from worker.settings import get_settings
from worker.storage import Storage

_AGREEMENT_MARKS = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}


@click.command()
@click.argument("results", nargs=-1, required=True)
@click.option("--labels", "labels_uri", help="CSV (uri,label) or JSON Lines file of true labels.")
@click.option(
    "--labels-from-folders", is_flag=True, help="Each image's folder name is its true label."
)
@click.option(
    "--sort",
    type=click.Choice(SORT_ORDERS),
    default="confidence",
    show_default=True,
    help="confidence: least sure first; -confidence: most sure first; recency: last written first.",
)
@click.option("--predicted", help="Only rows predicted as this label.")
@click.option("--true", "true_label", help="Only rows whose true label is this.")
@click.option(
    "--agree/--disagree",
    default=None,
    help="Only rows where prediction and true label agree (or disagree).",
)
@click.option("--errors", "errors_only", is_flag=True, help="Only images that failed.")
@click.option(
    "--domain",
    type=click.Choice(DOMAIN_FILTERS),
    help="Only images whose domain check said in, out (labelled or abstained) or unknown.",
)
@click.option(
    "--limit", type=click.IntRange(min=0), help="At most this many rows (and failed images)."
)
@click.option("--html", "html_uri", help="Write the HTML report here (a path or s3:// URI).")
@click.option("--positive", help="The ROC curve's positive class (default: second label).")
@click.option(
    "--max-thumbnails",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_THUMBNAILS,
    show_default=True,
    help="Thumbnails in the HTML report.",
)
def review(
    results: tuple[str, ...],
    labels_uri: str | None,
    labels_from_folders: bool,
    sort: str,
    predicted: str | None,
    true_label: str | None,
    agree: bool | None,
    errors_only: bool,
    domain: str | None,
    limit: int | None,
    html_uri: str | None,
    positive: str | None,
    max_thumbnails: int,
) -> None:
    """Review RESULTS (JSON Lines files, s3:// objects, or prefixes holding parts/*.jsonl)."""
    if labels_uri and labels_from_folders:
        raise click.UsageError("give --labels or --labels-from-folders, not both")
    try:
        query = ReviewQuery(
            sort=cast(SortOrder, sort),
            predicted=predicted,
            true=true_label,
            agree=agree,
            errors_only=errors_only,
            domain=cast(DomainFilter | None, domain),
            limit=limit,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    settings = get_settings()
    configure_logging(settings)
    storage = Storage.from_settings(settings)
    try:
        labels = load_labels(labels_uri, storage) if labels_uri else None
        loaded = with_true_labels(load_results(results, storage), labels, labels_from_folders)
        chosen = select(loaded, query)
        listing = Listing(chosen.images, query.describe(), query.order)
        metrics = review_metrics(loaded, positive)
        _print_review(Console(), chosen, metrics, scope_sentence(len(loaded), listing))
        if html_uri:
            page = render_report(
                loaded,
                f"synthdetect review: {', '.join(results)}",
                storage,
                listing=listing,
                positive_label=positive,
                max_thumbnails=max_thumbnails,
                limits=ImageLimits.from_settings(settings),
            )
            storage.put_bytes(html_uri, page.encode("utf-8"), REPORT_CONTENT_TYPE)
            Console(stderr=True).print(f"report written to {html_uri}")
    except (SynthdetectError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _print_review(console: Console, chosen: Review, metrics: ReviewMetrics, scope: str) -> None:
    if chosen.rows:
        table = Table(show_header=True, header_style="bold")
        table.add_column("uri", overflow="fold")
        table.add_column("predicted")
        table.add_column("confidence", justify="right")
        table.add_column("true")
        table.add_column("agree")
        table.add_column("domain")
        for row in chosen.rows:
            table.add_row(*_row_cells(row))
        console.print(table)
    if chosen.errors:
        table = Table(title="failed images", show_header=True, header_style="bold")
        table.add_column("uri", overflow="fold")
        table.add_column("error")
        table.add_column("message", overflow="fold")
        for row in chosen.errors:
            assert row.error is not None
            table.add_row(escape(row.uri), row.error.code.value, escape(row.error.message))
        console.print(table)
    summary = Table(title=f"metrics over all {metrics.total} results", show_header=False)
    summary.add_column("metric", style="bold")
    summary.add_column("value")
    for name, value in summary_rows(metrics):
        summary.add_row(escape(name), escape(value))
    console.print(summary)
    Console(stderr=True).print(escape(scope))


def _row_cells(row: ImageResult) -> tuple[str, ...]:
    return (
        escape(row.uri),
        escape(row.label or "-"),
        f"{row.confidence or 0.0:.3f}",
        escape(row.true_label or "-"),
        _AGREEMENT_MARKS[agreement(row)],
        domain_state(row),
    )
