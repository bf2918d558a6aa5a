"""The review report: one self-contained HTML file with metrics, plots and thumbnails.

Everything is inline: CSS in a ``<style>`` element, plots and thumbnails as
``data:`` URIs. The page needs no network and no JavaScript, so it can be mailed,
attached to a ticket or opened from an S3 console. All text is HTML-escaped:
URIs and labels come from users.

The metrics and plots always describe every result given; a ``Listing`` (what
``synthdetect review``'s filters selected) only chooses which images the page lists,
and the page says both counts ("metrics over all N results; showing the M images that
match --disagree"). A page over 5 hand-picked mistakes must not read "accuracy 0 %".
Without a listing every image is listed, misclassified first, then the least
confident. At most ``max_thumbnails`` get a thumbnail (the page says how many were
left out). Images are read through ``Storage`` by a bounded thread pool; images
inside tar archives (``archive.tar#member``) are read in one pass over each archive.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

from PIL import Image

from contracts import ImageResult
from worker.classify.inputs import TAR_SUFFIXES, iter_tar_items
from worker.errors import ImageFailure, JobRejected, StorageError
from worker.imaging import ImageLimits, decode_image
from worker.review.metrics import ReviewMetrics, review_metrics, summary_rows
from worker.review.plots import (
    confusion_matrix_png,
    per_class_accuracy_png,
    reliability_png,
    roc_png,
)
from worker.settings import Settings
from worker.storage import Storage

REPORT_CONTENT_TYPE = "text/html; charset=utf-8"
DEFAULT_MAX_THUMBNAILS = 500
"""More thumbnails make a page of many megabytes that browsers render slowly."""
THUMBNAIL_PX = 96
FETCH_CONCURRENCY = 8
"""Image reads in flight at once: enough to hide S3 latency, few enough to be polite."""

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6rem}
.card{border:1px solid #ccc;border-radius:4px;padding:.3rem;font-size:.75rem;overflow-wrap:anywhere}
.card.disagree{border:2px solid #c62828;background:#fdecea}
.thumb{display:block;margin:0 auto .2rem;image-rendering:pixelated}
.badge{display:inline-block;padding:0 .4rem;border-radius:3px;color:#fff}
.badge.agree{background:#2e7d32}.badge.disagree{background:#c62828}.badge.unknown{background:#777}
.missing{height:96px;display:flex;align-items:center;justify-content:center;background:#eee}
.note{color:#555}
.scope{font-size:1.05rem;background:#f3f6fa;border-left:4px solid #1565c0;padding:.5rem .8rem}
code{background:#eceff1;padding:0 .25rem;border-radius:3px}
"""

DEFAULT_ORDER = "misclassified first, then least confident"


@dataclass(frozen=True)
class Listing:
    """Which images a page lists; the page's metrics cover every result regardless."""

    images: Sequence[ImageResult]
    """In display order; failed images go to the failed-images table."""
    selection: str
    """The filter that chose them, as the flags that select it (``--disagree --limit 10``);
    empty when it chose every result."""
    order: str
    """How ``images`` are sorted, in words (``least confident first``)."""


def render_report(
    results: Sequence[ImageResult],
    title: str,
    storage: Storage,
    *,
    listing: Listing | None = None,
    positive_label: str | None = None,
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    thumbnail_px: int = THUMBNAIL_PX,
    concurrency: int = FETCH_CONCURRENCY,
    limits: ImageLimits | None = None,
) -> str:
    """The report over ``results`` as one HTML document.

    Counts, accuracies and plots cover all of ``results``; ``listing`` (default: every
    result, misclassified first) says which images are listed below them.
    ``positive_label`` is the class whose score the ROC curve ranks by (default: the
    second label in sorted order, e.g. ``synthetic`` of real/synthetic). Without any
    true labels the plots are left out and the page says why. ``limits`` guard the
    decoding of images for thumbnails (default: the settings' defaults).
    """
    metrics = review_metrics(results, positive_label)
    if listing is None:
        labelled = sorted(
            (r for r in results if r.error is None),
            key=lambda r: (not _misclassified(r), r.confidence or 0.0),
        )
        listing = Listing([*labelled, *(r for r in results if r.error is not None)], "", "")
    listed = [r for r in listing.images if r.error is None]
    errors = [r for r in listing.images if r.error is not None]
    shown = listed[: max(max_thumbnails, 0)]
    thumbnails = read_thumbnails(
        [r.uri for r in shown],
        storage,
        limits or ImageLimits.from_settings(Settings.model_construct()),
        thumbnail_px,
        concurrency,
    )
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
        _scope_html(len(results), listing),
        _summary_html(metrics),
        _plots_html(metrics),
        _errors_html(errors, metrics.tally.failed, max_thumbnails),
        _images_html(listed, shown, metrics.tally.labelled, listing, max_thumbnails),
        *(_card_html(r, thumbnails.get(r.uri)) for r in shown),
        "</div></body></html>",
    ]
    return "".join(parts)


def scope_sentence(total: int, listing: Listing) -> str:
    """What the metrics cover and what is listed, as plain text (the terminal says it too)."""
    order = listing.order or DEFAULT_ORDER
    if not listing.selection:
        return f"Metrics over all {total} results; showing all of them, {order}."
    count = len(listing.images)
    images = "image" if count == 1 else "images"
    return (
        f"Metrics over all {total} results; showing the {count} {images} "
        f"that match {listing.selection}, {order}."
    )


def _scope_html(total: int, listing: Listing) -> str:
    text = _e(scope_sentence(total, listing))
    if listing.selection:
        flags = _e(listing.selection)
        text = text.replace(f"match {flags}", f"match <code>{flags}</code>", 1)
    return f"<p class='scope'>{text}</p>"


def _images_html(
    listed: Sequence[ImageResult],
    shown: Sequence[ImageResult],
    classified: int,
    listing: Listing,
    cap: int,
) -> str:
    what = "matching " if listing.selection else ""
    note = (
        f"{len(listed)} {what}classified images of {classified}, {listing.order or DEFAULT_ORDER}."
    )
    if len(shown) < len(listed):
        note += f" Thumbnails for the first {len(shown)} (capped at {cap})."
    return f"<h2>Images</h2><p class='note'>{_e(note)}</p><div class='grid'>"


def _e(value: object) -> str:
    return html.escape(str(value))


def _misclassified(result: ImageResult) -> bool:
    return result.true_label is not None and result.label != result.true_label


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _summary_html(metrics: ReviewMetrics) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary_rows(metrics))
    return f"<table class='summary'>{body}</table>"


def _plots_html(metrics: ReviewMetrics) -> str:
    if not metrics.with_truth:
        return (
            "<p class='note'>No true labels: the confusion matrix, ROC curve, reliability "
            "diagram and per-class accuracy need them (review with --labels FILE or "
            "--labels-from-folders).</p>"
        )
    figures = [("confusion matrix", confusion_matrix_png(metrics.confusion, metrics.axis))]
    if metrics.roc is not None:
        figures.append(
            (f"ROC curve, AUC {metrics.roc.auc:.3f}", roc_png(metrics.roc, metrics.with_truth))
        )
    if metrics.reliability is not None:
        figures.append(
            (
                f"reliability diagram, ECE {metrics.reliability.ece:.3f}",
                reliability_png(metrics.reliability),
            )
        )
    figures.append(
        (
            "per-class accuracy",
            per_class_accuracy_png(metrics.per_class_accuracy, metrics.tally.seen_by_true_label),
        )
    )
    images = "".join(
        f"<img class='plot' alt='{_e(alt)}' src='{_data_uri(png, 'image/png')}'>"
        for alt, png in figures
    )
    note = f"<p class='note'>{_e(metrics.roc_note)}</p>" if metrics.roc_note else ""
    return (
        f"<h2>Metrics over all {metrics.with_truth} classified results with a true label</h2>"
        f"{note}<div class='plots'>{images}</div>"
    )


def _errors_html(errors: Sequence[ImageResult], failed: int, cap: int) -> str:
    if not errors:
        return ""
    rows = "".join(
        f"<tr><td>{_e(r.uri)}</td><td>{_e(r.error.code.value)}</td>"
        f"<td>{_e(r.error.message)}</td></tr>"
        for r in errors[:cap]
        if r.error is not None
    )
    more = f"<p class='note'>{len(errors) - cap} more not shown.</p>" if len(errors) > cap else ""
    heading = f"{len(errors)}" if len(errors) == failed else f"{len(errors)} of {failed}"
    return (
        f"<h2>Failed images ({heading})</h2><table class='errors'>"
        f"<tr><th>uri</th><th>error</th><th>message</th></tr>{rows}</table>{more}"
    )


def _card_html(result: ImageResult, thumbnail: bytes | None) -> str:
    badge = "unknown" if result.true_label is None else "agree"
    badge = "disagree" if _misclassified(result) else badge
    image = (
        f"<img class='thumb' alt='{_e(result.uri)}' src='{_data_uri(thumbnail, 'image/jpeg')}'>"
        if thumbnail is not None
        else "<div class='missing'>no preview</div>"
    )
    return (
        f"<div class='card {badge}' data-agree='{badge}'>{image}"
        f"<div class='uri'>{_e(result.uri)}</div>"
        f"<div>predicted <b>{_e(result.label)}</b>, confidence {result.confidence or 0.0:.3f}</div>"
        f"<div>true {_e(result.true_label or '-')} <span class='badge {badge}'>{badge}</span>"
        "</div></div>"
    )


# --- thumbnails ----------------------------------------------------------------------------


def read_thumbnails(
    uris: Iterable[str], storage: Storage, limits: ImageLimits, px: int, concurrency: int
) -> dict[str, bytes | None]:
    """JPEG thumbnails (at most ``px`` on a side) by address; None where an image cannot be
    read or decoded (the card then says "no preview"; the report never fails for it).
    """
    plain: list[str] = []
    by_archive: defaultdict[str, set[str]] = defaultdict(set)
    for uri in uris:
        archive, hash_mark, _ = uri.partition("#")
        if hash_mark and archive.lower().endswith(TAR_SUFFIXES):
            by_archive[archive].add(uri)
        else:
            plain.append(uri)
    found: dict[str, bytes | None] = {}
    with ThreadPoolExecutor(max_workers=max(concurrency, 1)) as pool:
        for uri, data in zip(
            plain, pool.map(lambda u: _read_one(u, storage, limits), plain), strict=True
        ):
            found[uri] = _thumbnail(data, limits, px)
        for members in pool.map(
            lambda a: _read_members(a, by_archive[a], storage, limits), by_archive
        ):
            found.update({uri: _thumbnail(data, limits, px) for uri, data in members.items()})
    return found


def _read_one(uri: str, storage: Storage, limits: ImageLimits) -> bytes | None:
    try:
        return storage.get_bytes(uri, limits.max_bytes)
    except StorageError:
        return None


def _read_members(
    archive: str, wanted: set[str], storage: Storage, limits: ImageLimits
) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = dict.fromkeys(wanted)
    left = set(wanted)
    with suppress(StorageError, JobRejected), storage.open_stream(archive) as stream:
        for item in iter_tar_items(stream, archive, limits.max_bytes):
            if item.uri in left:
                left.discard(item.uri)
                with suppress(ImageFailure):  # too large or empty: no preview
                    found[item.uri] = item.load()
            if not left:
                break
    return found


def _thumbnail(data: bytes | None, limits: ImageLimits, px: int) -> bytes | None:
    if data is None:
        return None
    try:
        image = decode_image(data, limits, target_size=(px, px))
    except ImageFailure:
        return None
    longest = max(image.size)
    if longest * 2 <= px:
        # Tiny images (CIFAKE is 32x32) are blown up by a whole factor, pixels kept sharp:
        # a reviewer must see the generator's artefacts, not a blur of them.
        factor = px // longest
        image = image.resize(
            (image.width * factor, image.height * factor), Image.Resampling.NEAREST
        )
    elif longest > px:
        image.thumbnail((px, px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
