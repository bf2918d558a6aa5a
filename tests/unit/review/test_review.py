"""Review: loading results, joining labels, filters and sorts, ROC numbers, the HTML report."""

from __future__ import annotations

import base64
import io
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from contracts import DomainCheck, ErrorCode, ImageError, ImageResult, ModelId
from tests.support.memory_store import MemoryStore
from worker.cli.main import main
from worker.review.metrics import area_under_curve, confusion_matrix, roc_curve
from worker.review.report import render_report
from worker.review.views import (
    DomainFilter,
    ReviewInputError,
    ReviewQuery,
    load_labels,
    load_results,
    select,
    with_true_labels,
    write_training_report,
)
from worker.storage import Storage

MODEL = ModelId(name="default", version="1")


def labelled(uri: str, label: str, confidence: float, true: str | None = None) -> ImageResult:
    other = "real" if label == "synthetic" else "synthetic"
    scores = {label: confidence, other: 1.0 - confidence}
    return ImageResult(
        uri=uri, label=label, confidence=confidence, scores=scores, model=MODEL, true_label=true
    )


def failed(uri: str, code: ErrorCode, true: str | None = None) -> ImageResult:
    return ImageResult(
        uri=uri, error=ImageError(code=code, message=f"{code} at {uri}"), true_label=true
    )


# In file order; a..e are classified, f and g failed.
RESULTS = [
    labelled("a.jpg", "real", 0.90, "real"),  # agree
    labelled("b.jpg", "synthetic", 0.60, "real"),  # disagree
    labelled("c.jpg", "synthetic", 0.95, "synthetic"),  # agree
    labelled("d.jpg", "real", 0.55, "synthetic"),  # disagree
    labelled("e.jpg", "real", 0.70),  # no true label
    failed("f.jpg", ErrorCode.NOT_FOUND, "real"),
    failed("g.jpg", ErrorCode.CORRUPT_IMAGE),
]


def write_jsonl(path: Path, results: list[ImageResult]) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in results))
    return path


@pytest.fixture
def storage() -> Storage:
    return Storage(lambda: MemoryStore())


@pytest.fixture
def results_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "results.jsonl", RESULTS)


def uris(rows: list[ImageResult]) -> list[str]:
    return [r.uri for r in rows]


@pytest.mark.parametrize(
    ("query", "rows", "errors"),
    [
        (ReviewQuery(), "d b e a c", "f g"),
        (ReviewQuery(sort="-confidence"), "c a e b d", "f g"),
        (ReviewQuery(sort="recency"), "e d c b a", "g f"),
        (ReviewQuery(predicted="synthetic"), "b c", ""),
        (ReviewQuery(true="real"), "b a", "f"),
        (ReviewQuery(true="synthetic", sort="recency"), "d c", ""),
        (ReviewQuery(agree=True), "a c", ""),
        (ReviewQuery(agree=False), "d b", ""),
        (ReviewQuery(agree=False, sort="-confidence", predicted="real"), "d", ""),
        (ReviewQuery(errors_only=True), "", "f g"),
        (ReviewQuery(errors_only=True, true="real"), "", "f"),
        (ReviewQuery(limit=2), "d b", "f g"),
        (ReviewQuery(limit=1, sort="recency"), "e", "g"),
        (ReviewQuery(limit=0), "", ""),
    ],
)
def test_filters_and_sorts_return_exactly_the_right_rows(
    results_file: Path, storage: Storage, query: ReviewQuery, rows: str, errors: str
) -> None:
    review = select(load_results([str(results_file)], storage), query)
    assert uris(review.rows) == [f"{name}.jpg" for name in rows.split()]
    assert uris(review.errors) == [f"{name}.jpg" for name in errors.split()]
    assert review.total == len(RESULTS)


def test_a_query_that_needs_a_prediction_cannot_ask_for_errors_only() -> None:
    with pytest.raises(ValueError, match="no prediction"):
        ReviewQuery(errors_only=True, agree=False)


def test_labels_from_csv_and_jsonl_replace_and_fill_true_labels(
    tmp_path: Path, results_file: Path, storage: Storage
) -> None:
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("uri,label\n./e.jpg,synthetic\nb.jpg, synthetic\n")
    jsonl_file = tmp_path / "labels.jsonl"
    jsonl_file.write_text(
        '{"uri": "e.jpg", "label": "synthetic"}\n\n{"uri": "b.jpg", "label": "synthetic"}\n'
    )
    results = load_results([str(results_file)], storage)
    for labels_file in (csv_file, jsonl_file):
        labels = load_labels(str(labels_file), storage)
        joined = with_true_labels(results, labels)
        assert [r.true_label for r in joined] == [
            "real", "synthetic", "synthetic", "synthetic", "synthetic", "real", None
        ]  # fmt: skip
        assert uris(select(joined, ReviewQuery(agree=False)).rows) == ["d.jpg", "e.jpg"]
        assert uris(select(joined, ReviewQuery(agree=True)).rows) == ["b.jpg", "a.jpg", "c.jpg"]


def test_a_bad_labels_row_is_named_by_line(tmp_path: Path, storage: Storage) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("a.jpg,real\nb.jpg,has space\n")
    with pytest.raises(ReviewInputError, match="line 2"):
        load_labels(str(bad), storage)


def test_labels_from_folders_include_tar_members() -> None:
    results = [
        labelled("data/real/a.jpg", "real", 0.9),
        labelled("s3://b/shard.tar#synthetic/x.png", "real", 0.8),
    ]
    assert [r.true_label for r in with_true_labels(results, from_folders=True)] == [
        "real",
        "synthetic",
    ]


def test_a_results_prefix_reads_its_parts_in_key_order() -> None:
    store = MemoryStore()
    store.put_bytes("s3://out/job/parts/00001.jsonl", RESULTS[1].model_dump_json().encode())
    store.put_bytes("s3://out/job/parts/00000.jsonl", RESULTS[0].model_dump_json().encode())
    store.put_bytes("s3://out/job/summary.json", b"{}")
    results = load_results(["s3://out/job"], Storage(lambda: store))
    assert uris(results) == ["a.jpg", "b.jpg"]
    assert uris(select(results, ReviewQuery(sort="recency")).rows) == ["b.jpg", "a.jpg"]


def test_a_malformed_results_line_is_named(tmp_path: Path, storage: Storage) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", RESULTS[:1])
    with path.open("a") as file:
        file.write('{"uri": "x.jpg"}\n')
    with pytest.raises(ReviewInputError, match="line 2"):
        load_results([str(path)], storage)
    with pytest.raises(ReviewInputError, match="no results"):
        load_results([str(tmp_path / "nothing")], storage)


# --- ROC -------------------------------------------------------------------------------------


def roc_auc(scores: list[float], positive: list[int]) -> float:
    return area_under_curve(*roc_curve(np.array(scores), np.array(positive, dtype=bool)))


def test_roc_auc_on_known_inputs() -> None:
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == pytest.approx(0.0)
    assert roc_auc([0.5] * 4, [0, 1, 0, 1]) == pytest.approx(0.5)  # ties: one diagonal step
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # A fixed pseudo-random sequence: scores unrelated to the labels.
    rng = np.random.default_rng(1234)
    assert roc_auc(list(rng.random(2000)), list(rng.integers(0, 2, 2000))) == pytest.approx(
        0.5, abs=0.03
    )
    fpr, tpr = roc_curve(np.array([0.3, 0.7]), np.array([False, True]))
    assert fpr.tolist() == [0.0, 0.0, 1.0]
    assert tpr.tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="both"):
        roc_curve(np.array([0.1, 0.2]), np.array([True, True]))


def test_confusion_matrix_rows_are_true_labels() -> None:
    matrix = confusion_matrix(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
    assert matrix.tolist() == [[1, 1], [0, 1]]


# --- the HTML report ------------------------------------------------------------------------


class _Images(HTMLParser):
    """Collects every <img> and each card's agreement badge, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.cards: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        fields = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(fields)
        if "data-agree" in fields:
            self.cards.append(fields["data-agree"])


def parse(page: str) -> _Images:
    parser = _Images()
    parser.feed(page)
    return parser


def image_results(folder: Path) -> list[ImageResult]:
    """RESULTS with real 32x32 PNGs behind them, one named to need escaping."""
    folder.mkdir()
    results = []
    for k, result in enumerate(RESULTS):
        name = "a&<b>.png" if k == 0 else result.uri.replace(".jpg", ".png")
        path = folder / name
        if result.error is None:
            Image.new("RGB", (32, 32), (40 * k, 100, 200)).save(path)
        results.append(result.model_copy(update={"uri": str(path)}))
    return results


def data_uri_image(src: str, mime: str) -> Image.Image:
    prefix = f"data:{mime};base64,"
    assert src.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))


def test_report_has_plots_and_thumbnails_with_mistakes_first(
    tmp_path: Path, storage: Storage
) -> None:
    results = image_results(tmp_path / "images")
    page = render_report(results, "Review <of> & such", storage)
    found = parse(page)
    plots = [i for i in found.images if i.get("class") == "plot"]
    thumbs = [i for i in found.images if i.get("class") == "thumb"]
    assert len(plots) == 4
    assert {p["alt"].split(",")[0] for p in plots} == {
        "confusion matrix", "ROC curve", "reliability diagram", "per-class accuracy"
    }  # fmt: skip
    assert all(data_uri_image(p["src"], "image/png").format == "PNG" for p in plots)
    assert len(thumbs) == 5
    assert data_uri_image(thumbs[0]["src"], "image/jpeg").size == (96, 96)  # 32x32 upscaled x3
    assert found.cards == ["disagree", "disagree", "unknown", "agree", "agree"]
    assert [t["alt"].rsplit("/", 1)[-1] for t in thumbs[:2]] == ["d.png", "b.png"]
    assert "Review &lt;of&gt; &amp; such" in page
    assert "a&amp;&lt;b&gt;.png" in page
    assert "a&<b>" not in page
    assert "not_found" in page
    assert "corrupt_image" in page
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page


def test_report_caps_thumbnails_and_explains_missing_plots(
    tmp_path: Path, storage: Storage
) -> None:
    results = [r.model_copy(update={"true_label": None}) for r in image_results(tmp_path / "i")]
    page = render_report(results, "no labels", storage, max_thumbnails=2)
    found = parse(page)
    assert [i.get("class") for i in found.images] == ["thumb", "thumb"]
    assert "capped at 2" in page
    assert "No true labels" in page


def test_report_reads_thumbnails_from_tar_members(tmp_path: Path, storage: Storage) -> None:
    archive = tmp_path / "shard.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("real/x.png", "synthetic/y.png"):
            buffer = io.BytesIO()
            Image.new("RGB", (200, 100), (200, 10, 10)).save(buffer, "PNG")
            info = tarfile.TarInfo(name)
            info.size = buffer.tell()
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    results = [labelled(f"{archive}#synthetic/y.png", "real", 0.8, "synthetic")]
    results.append(labelled(f"{archive}#missing.png", "real", 0.9, "real"))
    found = parse(render_report(results, "tar", storage, max_thumbnails=10))
    thumbs = [i for i in found.images if i.get("class") == "thumb"]
    assert len(thumbs) == 1  # the missing member gets a "no preview" box, not an image
    assert data_uri_image(thumbs[0]["src"], "image/jpeg").size == (96, 48)


def test_write_training_report_puts_html_next_to_the_card(tmp_path: Path) -> None:
    store = MemoryStore()
    predictions = [r for r in image_results(tmp_path / "cv") if r.true_label is not None]
    out = "s3://models/default/2/report.html"
    assert write_training_report(predictions, Storage(lambda: store), out, "default@2 CV") == out
    page = store.objects[out].decode()
    assert page.startswith("<!DOCTYPE html>")
    assert len([i for i in parse(page).images if i.get("class") == "plot"]) == 4


def test_review_command_prints_rows_and_writes_html(results_file: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    outcome = CliRunner().invoke(
        main, ["review", str(results_file), "--disagree", "--html", str(report)]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "d.jpg" in outcome.stdout
    assert "b.jpg" in outcome.stdout
    assert "a.jpg" not in outcome.stdout
    assert report.read_text().startswith("<!DOCTYPE html>")
    refused = CliRunner().invoke(main, ["review", str(results_file), "--errors", "--agree"])
    assert refused.exit_code == 2


def with_domain(result: ImageResult, in_domain: bool | None) -> ImageResult:
    check = DomainCheck(in_domain=in_domain, score=1.0, threshold=2.0, reason="why")
    return result.model_copy(update={"domain": check})


DOMAIN_RESULTS = [
    with_domain(labelled("in.jpg", "real", 0.9, "real"), True),
    with_domain(labelled("flagged.jpg", "synthetic", 0.8), False),
    with_domain(failed("abstained.jpg", ErrorCode.OUT_OF_DOMAIN), False),
    labelled("old.jpg", "real", 0.7),  # written before the domain check
]


@pytest.mark.parametrize(
    ("domain", "rows", "errors"),
    [
        ("in", ["in.jpg"], []),
        ("out", ["flagged.jpg"], ["abstained.jpg"]),
        ("unknown", ["old.jpg"], []),
    ],
)
def test_review_filters_by_the_domain_check(
    tmp_path: Path, storage: Storage, domain: DomainFilter, rows: list[str], errors: list[str]
) -> None:
    path = write_jsonl(tmp_path / "results.jsonl", DOMAIN_RESULTS)
    review = select(load_results([str(path)], storage), ReviewQuery(domain=domain))
    assert uris(review.rows) == rows
    assert uris(review.errors) == errors
    outcome = CliRunner().invoke(main, ["review", str(path), "--domain", domain])
    assert outcome.exit_code == 0, outcome.output
    for uri in rows + errors:
        assert uri in outcome.stdout
    assert f"--domain {domain}" in outcome.stderr
