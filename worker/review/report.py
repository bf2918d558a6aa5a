"""The review report: one self-contained HTML file with metrics, plots and thumbnails.

Everything is inline: CSS in a ``<style>`` element, plots and thumbnails as
``data:`` URIs. The page needs no network and no JavaScript, so it can be mailed,
attached to a ticket or opened from an S3 console. All text is HTML-escaped:
URIs and labels come from users.

Thumbnails show misclassified images first, then the least confident; at most
``max_thumbnails`` of them (the page says how many were left out). Images are read
through ``Storage`` by a bounded thread pool; images inside tar archives
(``archive.tar#member``) are read in one pass over each archive.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

import numpy as np
from PIL import Image

from contracts import ImageResult
from worker.classify.inputs import TAR_SUFFIXES, iter_tar_items
from worker.classify.tally import ResultTally
from worker.errors import ImageFailure, JobRejected, StorageError
from worker.imaging import ImageLimits, decode_image
from worker.review.evaluation import expected_calibration_error
from worker.review.plots import (
    area_under_curve,
    confusion_matrix,
    confusion_matrix_png,
    per_class_accuracy_png,
    reliability_bins,
    reliability_png,
    roc_curve,
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
"""


def render_report(
    results: Sequence[ImageResult],
    title: str,
    storage: Storage,
    *,
    positive_label: str | None = None,
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    thumbnail_px: int = THUMBNAIL_PX,
    concurrency: int = FETCH_CONCURRENCY,
    limits: ImageLimits | None = None,
) -> str:
    """The report over ``results`` as one HTML document.

    ``positive_label`` is the class whose score the ROC curve ranks by (default: the
    second label in sorted order, e.g. ``synthetic`` of real/synthetic). Without any
    true labels the plots are left out and the page says why. ``limits`` guard the
    decoding of images for thumbnails (default: the settings' defaults).
    """
    tally = ResultTally()
    for result in results:
        tally.add(result)
    labelled = [r for r in results if r.error is None]
    errors = [r for r in results if r.error is not None]
    ordered = sorted(labelled, key=lambda r: (not _misclassified(r), r.confidence or 0.0))
    shown = ordered[: max(max_thumbnails, 0)]
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
        _summary_html(tally),
        _plots_html(labelled, tally, positive_label),
        _errors_html(errors, max_thumbnails),
        f"<h2>Images</h2><p class='note'>Misclassified first, then lowest confidence. "
        f"Showing {len(shown)} of {len(labelled)} classified images"
        + (f" (capped at {max_thumbnails})." if len(shown) < len(labelled) else ".")
        + "</p><div class='grid'>",
        *(_card_html(r, thumbnails.get(r.uri)) for r in shown),
        "</div></body></html>",
    ]
    return "".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value))


def _misclassified(result: ImageResult) -> bool:
    return result.true_label is not None and result.label != result.true_label


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _summary_html(tally: ResultTally) -> str:
    rows = [("images", str(tally.total)), ("classified", str(tally.labelled))]
    rows += [("failed", str(tally.failed))]
    rows += [(f"predicted {label}", str(n)) for label, n in sorted(tally.by_label.items())]
    rows += [(f"error {code.value}", str(n)) for code, n in sorted(tally.by_error.items())]
    accuracy = tally.accuracy()
    if accuracy is not None:
        rows.append(("accuracy", f"{accuracy:.2%} of {sum(tally.seen_by_true_label.values())}"))
        rows += [
            (f"accuracy on {label}", f"{value:.2%} of {tally.seen_by_true_label[label]}")
            for label, value in tally.per_class_accuracy().items()
        ]
    models = ", ".join(f"{m.name}@{m.version}" for m in tally.models) or "-"
    rows.append(("models", models))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table class='summary'>{body}</table>"


def _plots_html(
    labelled: Sequence[ImageResult], tally: ResultTally, positive_label: str | None
) -> str:
    known = [r for r in labelled if r.true_label is not None]
    if not known:
        return (
            "<p class='note'>No true labels: the confusion matrix, ROC curve, reliability "
            "diagram and per-class accuracy need them (review with --labels FILE or "
            "--labels-from-folders).</p>"
        )
    true = [r.true_label or "" for r in known]
    predicted = [r.label or "" for r in known]
    axis = sorted(set(true) | set(predicted))
    matrix = confusion_matrix(true, predicted, axis)
    figures = [("confusion matrix", confusion_matrix_png(matrix, axis))]
    classes = sorted({label for r in known for label in r.scores or {}})
    probs = np.array([[(r.scores or {}).get(c, 0.0) for c in classes] for r in known])
    roc, note = _roc_figure(probs, classes, true, positive_label)
    figures += roc
    targets = np.array([classes.index(t) if t in classes else -1 for t in true])
    ece = expected_calibration_error(probs, targets)
    bins = reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == targets)
    figures.append((f"reliability diagram, ECE {ece:.3f}", reliability_png(*bins, ece)))
    figures.append(("per-class accuracy", per_class_accuracy_png(tally.per_class_accuracy())))
    images = "".join(
        f"<img class='plot' alt='{_e(alt)}' src='{_data_uri(png, 'image/png')}'>"
        for alt, png in figures
    )
    note_html = f"<p class='note'>{_e(note)}</p>" if note else ""
    return f"<h2>Metrics</h2>{note_html}<div class='plots'>{images}</div>"


def _roc_figure(
    probs: np.ndarray, classes: list[str], true: list[str], positive_label: str | None
) -> tuple[list[tuple[str, bytes]], str | None]:
    """The ROC figure, or no figure and a sentence saying why there is none."""
    positive = positive_label or (classes[1] if len(classes) > 1 else None)
    if positive is None:
        return [], "No ROC curve: the model scored a single class."
    if positive not in classes:
        return [], f"No ROC curve: the model gave no scores for the positive class {positive}."
    try:
        fpr, tpr = roc_curve(probs[:, classes.index(positive)], np.array(true) == positive)
    except ValueError:
        return [], f"No ROC curve: it needs true labels both {positive} and not {positive}."
    auc = area_under_curve(fpr, tpr)
    return [(f"ROC curve, AUC {auc:.3f}", roc_png(fpr, tpr, auc, positive))], None


def _errors_html(errors: Sequence[ImageResult], cap: int) -> str:
    if not errors:
        return ""
    rows = "".join(
        f"<tr><td>{_e(r.uri)}</td><td>{_e(r.error.code.value)}</td>"
        f"<td>{_e(r.error.message)}</td></tr>"
        for r in errors[:cap]
        if r.error is not None
    )
    more = f"<p class='note'>{len(errors) - cap} more not shown.</p>" if len(errors) > cap else ""
    return (
        f"<h2>Failed images ({len(errors)})</h2><table class='errors'>"
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
        f"<div>predicted <b>{_e(result.label)}</b> {result.confidence or 0.0:.3f}</div>"
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
