"""``synthdetect classify``: the embedded mode (DESIGN §8).

The same pipeline as the queue worker, on local files, folders, tars or s3://
URIs, with the bundled model and no servers. Results go to ``--out`` (or
stdout) as JSON Lines; a summary goes to stderr. The exit code is non-zero only
when the command itself fails, never because some images were bad.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts import ErrorCode, ModelRef
from worker.classify.inputs import expand_paths
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.classify.tally import ResultTally
from worker.errors import ModelError, SynthdetectError
from worker.imaging import ImageLimits
from worker.inference.engine import InferenceEngine
from worker.logs import configure_logging
from worker.settings import Settings, get_settings
from worker.storage import Storage


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write JSON Lines here instead of stdout.",
)
@click.option(
    "--model",
    "-m",
    "model_text",
    default=None,
    help="Model name or name@version (default: the bundled default model).",
)
@click.option(
    "--labels-from-folders",
    is_flag=True,
    help="Record each image's parent folder name as its true label (for accuracy).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 8192),
    default=None,
    help="Largest inference batch (default: SYNTHDETECT_MAX_BATCH).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
def classify(
    paths: tuple[str, ...],
    out: Path | None,
    model_text: str | None,
    labels_from_folders: bool,
    batch_size: int | None,
    progress: bool | None,
) -> None:
    """Classify images in PATHS: files, folders (recursive), .tar archives, s3:// URIs."""
    settings = get_settings()
    if batch_size is not None:
        settings = settings.model_copy(update={"max_batch": batch_size})
    configure_logging(settings)
    console = Console(stderr=True)
    model = ModelRef.parse(model_text or settings.default_model)
    show_progress = console.is_terminal if progress is None else progress
    try:
        tally, elapsed = _run_classify(
            paths, out, model, labels_from_folders, settings, console, show_progress
        )
    except (SynthdetectError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    _print_summary(console, tally, elapsed)


def _run_classify(
    paths: tuple[str, ...],
    out: Path | None,
    model: ModelRef,
    labels_from_folders: bool,
    settings: Settings,
    console: Console,
    show_progress: bool,
) -> tuple[ResultTally, float]:
    storage = Storage.from_settings(settings)
    engine = InferenceEngine.from_settings(settings, storage)
    try:
        engine.model_for(model)  # fail fast, before reading any image, if the model is unusable
    except ModelError:
        engine.close()
        raise
    tally = ResultTally()
    limits = ImageLimits.from_settings(settings)
    items = expand_paths(list(paths), storage, settings.max_image_bytes, labels_from_folders)
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.callback(engine.close)
        sink: IO[str] = stack.enter_context(out.open("w")) if out else sys.stdout
        bar = stack.enter_context(_progress(console, show_progress))
        task = bar.add_task("classifying", total=None)
        for result in classify_items(
            items, engine, model, limits, PipelineConfig.from_settings(settings)
        ):
            sink.write(result.model_dump_json() + "\n")
            tally.add(result)
            bar.advance(task)
    return tally, time.perf_counter() - started


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.speed:>7.0f} img/s" if enabled else ""),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    )


def _print_summary(console: Console, tally: ResultTally, elapsed: float) -> None:
    table = Table(title="synthdetect classify", show_header=True, header_style="bold")
    table.add_column("outcome")
    table.add_column("images", justify="right")
    for label, n in sorted(tally.by_label.items()):
        table.add_row(f"label: {label}", str(n))
    for code, n in sorted(tally.by_error.items()):
        kind = "abstained" if code == ErrorCode.OUT_OF_DOMAIN else "error"
        table.add_row(f"{kind}: {code.value}", str(n))
    table.add_row("total", str(tally.total), style="bold")
    if tally.out_of_domain:
        table.add_row("of which out of the model's domain", str(tally.out_of_domain))
    if tally.decided_by_provenance:
        table.add_row(
            "of which labelled by a validated C2PA claim", str(tally.decided_by_provenance)
        )
    console.print(table)
    rate = tally.total / elapsed if elapsed > 0 else 0.0
    models = ", ".join(f"{m.name}@{m.version}" for m in tally.models) or "-"
    console.print(f"{tally.total} images in {elapsed:.2f} s ({rate:,.0f} img/s), model {models}")
    accuracy = tally.accuracy()
    if accuracy is not None:
        per_class = ", ".join(f"{k} {v:.1%}" for k, v in tally.per_class_accuracy().items())
        console.print(f"accuracy against folder labels: {accuracy:.2%} ({per_class})")
