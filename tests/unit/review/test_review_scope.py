"""A review's metrics describe every result; filters only choose which images are listed.

The page once said "accuracy 0.00 % of 5, AUC 0.000" for ``--disagree --limit 10``:
its numbers came from the five mistakes it listed. Here every filter must leave the
summary table, the plots and the terminal's metrics exactly as they are without one,
and the page and the terminal must say both counts.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.memory_store import MemoryStore
from tests.unit.review.test_review import RESULTS, image_results, write_jsonl
from worker.cli.main import main
from worker.review.metrics import review_metrics, summary_rows
from worker.review.report import Listing, render_report
from worker.review.views import ReviewQuery, select
from worker.storage import Storage

FILTERS = [
    [],
    ["--disagree"],
    ["--disagree", "--limit", "1"],
    ["--agree", "--sort", "-confidence"],
    ["--predicted", "synthetic"],
    ["--true", "real"],
    ["--errors"],
    ["--limit", "0"],
]


class _Page(HTMLParser):
    """The summary table's rows, the plots (alt text and bytes) and the scope sentence."""

    def __init__(self) -> None:
        super().__init__()
        self.summary: list[str] = []
        self.plots: list[tuple[str, str]] = []
        self.scope = ""
        self.cards = 0
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        fields = {k: v or "" for k, v in attrs}
        if tag == "table" and fields.get("class") == "summary":
            self._in = "summary"
        elif tag == "p" and fields.get("class") == "scope":
            self._in = "scope"
        elif tag == "img" and fields.get("class") == "plot":
            self.plots.append((fields["alt"], fields["src"]))
        elif tag == "div" and "data-agree" in fields:
            self.cards += 1

    def handle_endtag(self, tag: str) -> None:
        if (tag, self._in) in {("table", "summary"), ("p", "scope")}:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "summary":
            self.summary.append(data)
        elif self._in == "scope":
            self.scope += data


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def review(results_file: Path, tmp_path: Path, flags: list[str]) -> tuple[str, str, _Page]:
    """stdout, stderr and the parsed page of ``synthdetect review`` with ``flags``."""
    page = tmp_path / f"review{len(list(tmp_path.glob('review*.html')))}.html"
    outcome = CliRunner().invoke(main, ["review", str(results_file), *flags, "--html", str(page)])
    assert outcome.exit_code == 0, outcome.output
    return outcome.stdout, outcome.stderr, parse(page.read_text())


@pytest.fixture
def results_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "results.jsonl", image_results(tmp_path / "images"))


def metrics_table(stdout: str) -> str:
    """The terminal's metrics table: everything from its title on."""
    return stdout[stdout.index("metrics over all") :]


def test_filters_change_the_listed_images_never_the_metrics(
    results_file: Path, tmp_path: Path
) -> None:
    stdout, _, page = review(results_file, tmp_path, [])
    assert len(page.plots) == 4
    assert page.cards == 5
    for flags in FILTERS[1:]:
        filtered_stdout, _, filtered = review(results_file, tmp_path, flags)
        assert filtered.summary == page.summary, flags
        assert filtered.plots == page.plots, flags  # same alt text (AUC, ECE), same PNG bytes
        assert metrics_table(filtered_stdout) == metrics_table(stdout), flags


def test_the_page_and_the_terminal_state_both_counts(results_file: Path, tmp_path: Path) -> None:
    stdout, stderr, page = review(results_file, tmp_path, ["--disagree", "--limit", "10"])
    sentence = (
        "Metrics over all 7 results; showing the 2 images that match --disagree --limit 10, "
        "least confident first."
    )
    assert " ".join(page.scope.split()) == sentence
    assert sentence in " ".join(stderr.split())
    assert page.cards == 2
    assert "metrics over all 7 results" in stdout
    _, _, everything = review(results_file, tmp_path, [])
    assert " ".join(everything.scope.split()) == (
        "Metrics over all 7 results; showing all of them, least confident first."
    )


def test_the_numbers_are_those_of_all_results(results_file: Path, tmp_path: Path) -> None:
    """a..d carry true labels, two of them right: 50 %, whatever the filter lists."""
    _, _, page = review(results_file, tmp_path, ["--disagree"])
    text = " ".join(page.summary)
    assert "results 7 " in text
    assert "accuracy 50.00% (2 of 4 with a true label)" in text
    assert "failed 2 " in text
    rows = dict(summary_rows(review_metrics(RESULTS)))
    assert rows["accuracy"] == "50.00% (2 of 4 with a true label)"
    assert rows["accuracy on real"] == "50.00% (1 of 2)"
    assert rows["error not_found"] == "1"


def test_render_report_lists_only_the_listing(tmp_path: Path) -> None:
    results = image_results(tmp_path / "images")
    chosen = select(results, ReviewQuery(agree=False))
    storage = Storage(lambda: MemoryStore())
    listed = parse(
        render_report(
            results, "t", storage, listing=Listing(chosen.images, "--disagree", "least first")
        )
    )
    unfiltered = parse(render_report(results, "t", storage))
    assert listed.cards == 2
    assert unfiltered.cards == 5
    assert listed.summary == unfiltered.summary
    assert listed.plots == unfiltered.plots
