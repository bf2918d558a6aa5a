"""Reviewing results: load them, join known labels, filter and sort the rows people look at.

The same code reviews a classify job's results and a retrain run's cross-validation
predictions: both are ``ImageResult`` JSON Lines (the latter with ``true_label`` set).
Functions here only read; ``write_training_report`` is the one writer, for retrain jobs.

Orders (``SortOrder``):

- ``confidence``: least confident first, the rows most worth a second look (default);
- ``-confidence``: most confident first (with ``disagree``: confident mistakes first);
- ``recency``: newest first. Results carry no timestamps, so "newest" means written
  last: the reverse of file order, later files (or parts, in key order) first.

Equal confidences keep file order. Failed images have no confidence and are kept
apart, in ``Review.errors``, in file order (newest first under ``recency``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from contracts import ImageResult
from contracts._base import Label
from worker.classify.inputs import folder_label
from worker.errors import SynthdetectError
from worker.imaging import ImageLimits
from worker.review.report import DEFAULT_MAX_THUMBNAILS, REPORT_CONTENT_TYPE, render_report
from worker.storage import S3_SCHEME, Storage

SortOrder = Literal["confidence", "-confidence", "recency"]
SORT_ORDERS: tuple[SortOrder, ...] = ("confidence", "-confidence", "recency")
DomainFilter = Literal["in", "out", "unknown"]
DOMAIN_FILTERS: tuple[DomainFilter, ...] = ("in", "out", "unknown")
ORDER_WORDS: dict[SortOrder, str] = {
    "confidence": "least confident first",
    "-confidence": "most confident first",
    "recency": "last written first",
}
RESULT_SUFFIXES = (".jsonl", ".ndjson")
"""Under a results prefix, only these objects are read (summaries and reports are not)."""

REPORT_NAME = "report.html"
"""A retrain run's report sits next to its model card under this name."""

_LABEL = TypeAdapter(Label)


class ReviewInputError(SynthdetectError):
    """A results or labels file cannot be read as one; the message names file and line."""


@dataclass(frozen=True)
class ReviewQuery:
    """Which rows to show and in what order; every filter is optional.

    ``predicted`` and ``agree`` need a prediction, so they leave out failed images;
    ``errors_only`` leaves out labelled ones. ``agree`` True keeps rows whose true
    label equals the prediction, False rows where they differ; rows without a
    true label match neither. ``domain`` keeps images whose domain check said in,
    out (labelled under the flag policy, abstentions under abstain) or unknown.
    ``limit`` caps rows and errors each.
    """

    sort: SortOrder = "confidence"
    predicted: str | None = None
    true: str | None = None
    agree: bool | None = None
    errors_only: bool = False
    domain: DomainFilter | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.errors_only and (self.predicted is not None or self.agree is not None):
            raise ValueError("failed images have no prediction: errors-only excludes them")
        if self.sort not in SORT_ORDERS:
            raise ValueError(f"sort must be one of {', '.join(SORT_ORDERS)}, not {self.sort!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if self.domain is not None and self.domain not in DOMAIN_FILTERS:
            raise ValueError(f"domain must be one of {', '.join(DOMAIN_FILTERS)}")

    def describe(self) -> str:
        """The filter as the ``synthdetect review`` flags that select it, e.g.
        ``--disagree --limit 10``; empty when it selects every result."""
        flags = []
        if self.predicted is not None:
            flags.append(f"--predicted {shlex.quote(self.predicted)}")
        if self.true is not None:
            flags.append(f"--true {shlex.quote(self.true)}")
        if self.agree is not None:
            flags.append("--agree" if self.agree else "--disagree")
        if self.errors_only:
            flags.append("--errors")
        if self.domain is not None:
            flags.append(f"--domain {self.domain}")
        if self.limit is not None:
            flags.append(f"--limit {self.limit}")
        return " ".join(flags)

    @property
    def order(self) -> str:
        """The sort order in words."""
        return ORDER_WORDS[self.sort]


@dataclass(frozen=True)
class Review:
    """The selected rows: labelled results in ``rows``, failed ones in ``errors``.

    A selection chooses what to list; metrics are computed over every result
    (``worker.review.metrics``), never over a selection.
    """

    rows: list[ImageResult]
    errors: list[ImageResult]
    total: int
    """How many results were reviewed, before filtering."""

    @property
    def images(self) -> list[ImageResult]:
        """Rows, then errors: every selected result in listing order."""
        return [*self.rows, *self.errors]


def domain_state(result: ImageResult) -> DomainFilter:
    """'in', 'out' or 'unknown': what the image's domain check said."""
    if result.domain is None or result.domain.in_domain is None:
        return "unknown"
    return "in" if result.domain.in_domain else "out"


def agreement(result: ImageResult) -> bool | None:
    """Whether the prediction equals the true label; None when either is unknown."""
    if result.label is None or result.true_label is None:
        return None
    return result.label == result.true_label


# --- loading -------------------------------------------------------------------------------


def load_results(sources: Sequence[str], storage: Storage) -> list[ImageResult]:
    """Every result in ``sources``, in file order, files in the order given.

    A source is a JSON Lines object or file, or a prefix/folder: then every
    ``.jsonl``/``.ndjson`` object under it (e.g. a job's ``parts/``) is read, in key
    order, which is shard order. Raises ``ReviewInputError`` for a malformed line or
    a prefix with no results, ``StorageError`` when the store fails.
    """
    results: list[ImageResult] = []
    for source in sources:
        for uri in _result_files(source, storage):
            results.extend(_read_results(uri, storage))
    return results


def _result_files(source: str, storage: Storage) -> list[str]:
    if storage.exists(source):
        return [source]
    prefix = source.rstrip("/") + "/"
    found = [
        info.uri
        for info in storage.list_objects(prefix)
        if info.uri.lower().endswith(RESULT_SUFFIXES)
    ]
    if not found:
        raise ReviewInputError(f"no results at {source}: neither a file nor a prefix of .jsonl")
    return found


def _read_results(uri: str, storage: Storage) -> Iterator[ImageResult]:
    for number, line in _lines(uri, storage):
        try:
            yield ImageResult.model_validate_json(line)
        except ValidationError as exc:
            raise ReviewInputError(f"{uri} line {number}: not an ImageResult: {exc}") from exc


def _lines(uri: str, storage: Storage) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, streamed (results files can be large)."""
    with storage.open_stream(uri) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig")
        try:
            for number, line in enumerate(text, start=1):
                if line.strip():
                    yield number, line
        except UnicodeDecodeError as exc:
            raise ReviewInputError(f"{uri} is not UTF-8 text") from exc


def load_labels(uri: str, storage: Storage) -> dict[str, str]:
    """Known labels by image address from a CSV (``uri,label``, header optional) or JSON Lines
    (``{"uri": ..., "label": ...}``) file, told apart by ending, else by a leading ``{``.

    Unlike a job manifest, addresses may be local paths: results of the embedded mode
    name local files. Raises ``ReviewInputError`` naming the line of a malformed row.
    """
    lines = list(_lines(uri, storage))
    as_json = uri.lower().endswith(RESULT_SUFFIXES) or (
        not uri.lower().endswith(".csv") and bool(lines) and lines[0][1].lstrip().startswith("{")
    )
    rows = _json_label_rows(lines, uri) if as_json else _csv_label_rows(lines, uri)
    labels: dict[str, str] = {}
    for number, image_uri, label in rows:
        try:
            labels[_uri_key(image_uri)] = _LABEL.validate_python(label)
        except ValidationError as exc:
            raise ReviewInputError(f"{uri} line {number}: bad label {label!r}") from exc
    return labels


def _json_label_rows(lines: Iterable[tuple[int, str]], uri: str) -> Iterator[tuple[int, str, str]]:
    for number, line in lines:
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReviewInputError(f"{uri} line {number}: not JSON ({exc.msg})") from exc
        if not (
            isinstance(fields, dict)
            and isinstance(fields.get("uri"), str)
            and isinstance(fields.get("label"), str)
        ):
            raise ReviewInputError(f'{uri} line {number}: expected {{"uri": ..., "label": ...}}')
        yield number, fields["uri"], fields["label"]


def _csv_label_rows(lines: Iterable[tuple[int, str]], uri: str) -> Iterator[tuple[int, str, str]]:
    for index, (number, line) in enumerate(lines):
        try:
            cells = [cell.strip() for cell in next(csv.reader([line]))]
        except csv.Error as exc:
            raise ReviewInputError(f"{uri} line {number}: not CSV ({exc})") from exc
        if index == 0 and [cell.lower() for cell in cells] == ["uri", "label"]:
            continue
        if len(cells) != 2 or not cells[0]:
            raise ReviewInputError(f"{uri} line {number}: expected uri,label")
        yield number, cells[0], cells[1]


def _uri_key(uri: str) -> str:
    """The form addresses are matched in: ``./a/b.jpg``, ``a//b.jpg``, ``a/b.jpg`` are one file."""
    if uri.startswith(S3_SCHEME):
        return uri
    path, hash_mark, member = uri.removeprefix("file://").partition("#")
    return os.path.normpath(path) + hash_mark + member


def with_true_labels(
    results: Iterable[ImageResult],
    labels: Mapping[str, str] | None = None,
    from_folders: bool = False,
) -> list[ImageResult]:
    """``results`` with ``true_label`` set from ``labels`` (keyed as ``load_labels`` keys them)
    or, with ``from_folders``, from each image's folder name (as ``classify
    --labels-from-folders`` does). A supplied label replaces one already in a result;
    results it does not cover keep theirs.
    """
    joined = []
    for result in results:
        label = labels.get(_uri_key(result.uri)) if labels else None
        if label is None and from_folders:
            label = folder_label(result.uri)
        if label is not None and label != result.true_label:
            result = result.model_copy(update={"true_label": label})
        joined.append(result)
    return joined


# --- selecting -----------------------------------------------------------------------------


def select(results: Sequence[ImageResult], query: ReviewQuery) -> Review:
    """The rows and errors of ``results`` (in file order) that ``query`` asks for."""
    rows = [] if query.errors_only else [r for r in results if r.error is None]
    errors = (
        []
        if query.predicted is not None or query.agree is not None
        else [r for r in results if r.error is not None]
    )
    if query.predicted is not None:
        rows = [r for r in rows if r.label == query.predicted]
    if query.true is not None:
        rows = [r for r in rows if r.true_label == query.true]
        errors = [r for r in errors if r.true_label == query.true]
    if query.agree is not None:
        rows = [r for r in rows if agreement(r) is query.agree]
    if query.domain is not None:
        rows = [r for r in rows if domain_state(r) == query.domain]
        errors = [r for r in errors if domain_state(r) == query.domain]
    if query.sort == "recency":
        rows.reverse()
        errors.reverse()
    else:
        sign = -1.0 if query.sort == "-confidence" else 1.0
        rows.sort(key=lambda r: sign * (r.confidence or 0.0))
    if query.limit is not None:
        rows, errors = rows[: query.limit], errors[: query.limit]
    return Review(rows=rows, errors=errors, total=len(results))


# --- retrain runs --------------------------------------------------------------------------


def write_training_report(
    predictions: Sequence[ImageResult],
    storage: Storage,
    out_uri: str,
    title: str,
    limits: ImageLimits | None = None,
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
) -> str:
    """Render the review of a retrain run's cross-validation predictions and store it at
    ``out_uri`` (by convention ``<model version folder>/report.html``); returns ``out_uri``.

    Predictions need ``true_label`` set: a run without them has nothing to review.
    Writing replaces an earlier report, so a retried job is harmless. Thumbnails of
    tar members cost a read of their archive up to the member: lower ``max_thumbnails``
    when the dataset is a few large shards.
    """
    if not any(p.true_label is not None for p in predictions):
        raise ValueError("cross-validation predictions must carry true labels")
    html = render_report(predictions, title, storage, limits=limits, max_thumbnails=max_thumbnails)
    storage.put_bytes(out_uri, html.encode("utf-8"), REPORT_CONTENT_TYPE)
    return out_uri
