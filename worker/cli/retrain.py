"""``synthdetect train``: retrain locally, the same run as the queue's retrain task.

``train DATA...`` takes local folders (one sub-folder per label), tars or s3://
prefixes and publishes into the registry (``--registry`` or
``SYNTHDETECT_MODEL_REGISTRY``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import click
from rich.console import Console
from rich.status import Status

from contracts import Budget, PromotionPolicy
from worker.classify.inputs import InputItem, expand_paths
from worker.cli.models import open_registry
from worker.cli.options import parse_duration, registry_option, retrain_options
from worker.errors import SynthdetectError
from worker.logs import configure_logging
from worker.retrain.run import RetrainRequest, run_retrain
from worker.settings import get_settings


@click.command()
@click.argument("data", nargs=-1, required=True)
@retrain_options
@click.option(
    "--holdout",
    "holdout_paths",
    multiple=True,
    help="Labelled held-out data (folders per label); replaces --holdout-share.",
)
@registry_option(
    "Registry root to publish to (folder or s3://); default SYNTHDETECT_MODEL_REGISTRY."
)
def train(
    data: tuple[str, ...],
    name: str | None,
    budget_text: str,
    trials: int | None,
    folds: int,
    holdout_share: float,
    promotion: str,
    margin: float,
    seed: int,
    holdout_paths: tuple[str, ...],
    registry: str | None,
) -> None:
    """Train a new model version from labelled images in DATA (one folder per label)."""
    settings = get_settings()
    configure_logging(settings)
    console = Console(stderr=True)
    if not (registry or settings.model_registry):
        raise click.UsageError("say where to publish: --registry DIR or SYNTHDETECT_MODEL_REGISTRY")
    models, storage = open_registry(settings, registry)
    limit = settings.max_image_bytes

    def items(paths: tuple[str, ...]) -> Callable[[], Iterator[InputItem]]:
        return lambda: expand_paths(list(paths), storage, limit, labels_from_folders=True)

    request = RetrainRequest(
        model=name or settings.default_model,
        source=", ".join(data),
        items=items(data),
        holdout_items=items(holdout_paths) if holdout_paths else None,
        holdout_share=holdout_share,
        budget=Budget(seconds=parse_duration(budget_text), trials=trials),
        folds=folds,
        # click.Choice keeps ``promotion`` to the policy's modes; validation says so if not.
        promotion=PromotionPolicy.model_validate({"mode": promotion, "margin": margin}),
        seed=seed,
        job_id=f"local-{int(time.time())}",
    )
    started = time.monotonic()
    try:
        with console.status("training") as status:
            summary = run_retrain(
                request,
                settings,
                storage,
                models,
                on_progress=lambda m: _progress(console, status, m, started),
            )
    except SynthdetectError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.model_dump_json(indent=2))


def _progress(console: Console, status: Status, message: str, started: float) -> None:
    console.log(f"[{time.monotonic() - started:6.1f} s] {message}")
    status.update(message)
