"""``synthdetect train`` and ``synthdetect models``: retrain locally, manage versions.

``train DATA...`` runs the same retrain as the queue's retrain task, on local
folders (one sub-folder per label), tars or s3:// prefixes, publishing into the
registry (``--registry`` or ``SYNTHDETECT_MODEL_REGISTRY``). ``models`` lists
and shows versions, promotes one, or rolls the ``production`` alias back.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import click
from rich.console import Console
from rich.table import Table

from contracts import Budget, ModelId, PromotionPolicy
from worker.classify.inputs import InputItem, expand_paths
from worker.errors import SynthdetectError
from worker.inference.registry import PRODUCTION, ModelRegistry
from worker.logs import configure_logging
from worker.retrain.run import RetrainRequest, run_retrain
from worker.settings import Settings, get_settings
from worker.storage import Storage

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>s|m|h)?$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m`` or ``1.5h`` -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration like 60s, 5m or 1h")
    return float(match["n"]) * {"s": 1, "m": 60, "h": 3600}[match["unit"] or "s"]


def _registry(settings: Settings, registry: str | None) -> tuple[ModelRegistry, Storage]:
    if registry:
        settings = settings.model_copy(update={"model_registry": registry})
    storage = Storage.from_settings(settings)
    return ModelRegistry.from_settings(settings, storage), storage


@click.command()
@click.argument("data", nargs=-1, required=True)
@click.option("--name", default=None, help="Model name (default: SYNTHDETECT_DEFAULT_MODEL).")
@click.option(
    "--budget",
    "budget_text",
    default="5m",
    show_default=True,
    help="Time for the whole run: search, CV, final fit, export (e.g. 60s, 5m, 1h).",
)
@click.option(
    "--trials",
    type=click.IntRange(1, 1000),
    default=None,
    help="Most candidates to screen (default: as many as the budget allows, up to 3).",
)
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--holdout-share", type=click.FloatRange(0.01, 0.9), default=0.2, show_default=True)
@click.option(
    "--holdout",
    "holdout_paths",
    multiple=True,
    help="Labelled held-out data (folders per label); replaces --holdout-share.",
)
@click.option(
    "--promotion",
    type=click.Choice(["if_not_worse", "always", "never"]),
    default="if_not_worse",
    show_default=True,
)
@click.option(
    "--margin",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Promote if held-out accuracy >= production's minus this.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--registry",
    default=None,
    help="Registry root to publish to (folder or s3://); default SYNTHDETECT_MODEL_REGISTRY.",
)
def train(
    data: tuple[str, ...],
    name: str | None,
    budget_text: str,
    trials: int | None,
    folds: int,
    holdout_share: float,
    holdout_paths: tuple[str, ...],
    promotion: str,
    margin: float,
    seed: int,
    registry: str | None,
) -> None:
    """Train a new model version from labelled images in DATA (one folder per label)."""
    settings = get_settings()
    configure_logging(settings)
    console = Console(stderr=True)
    if not (registry or settings.model_registry):
        raise click.UsageError("say where to publish: --registry DIR or SYNTHDETECT_MODEL_REGISTRY")
    models, storage = _registry(settings, registry)
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
        promotion=PromotionPolicy(mode=promotion, margin=margin),  # type: ignore[arg-type]
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


def _progress(console: Console, status: object, message: str, started: float) -> None:
    console.log(f"[{time.monotonic() - started:6.1f} s] {message}")
    status.update(message)  # type: ignore[attr-defined]


@click.group()
def models() -> None:
    """List, show, promote and roll back model versions."""


@models.command("list")
@click.argument("name", required=False)
@click.option("--registry", default=None)
def list_models(name: str | None, registry: str | None) -> None:
    """Versions of NAME (default model if omitted) with their held-out accuracy."""
    settings = get_settings()
    reg, _ = _registry(settings, registry)
    name = name or settings.default_model
    alias = reg.read_alias(name, PRODUCTION)
    table = Table(title=f"{name} ({PRODUCTION} = {alias.version if alias else '-'})")
    for column in ("version", "created", "architecture", "held-out accuracy", "ECE", ""):
        table.add_column(column)
    for version in reg.list_versions(name):
        card = reg.read_card(ModelId(name=name, version=version))
        heldout = card.metrics.get("heldout")
        table.add_row(
            version,
            card.created_at.strftime("%Y-%m-%d %H:%M"),
            card.architecture,
            f"{heldout.accuracy:.4f}" if heldout else "-",
            f"{heldout.ece:.4f}" if heldout and heldout.ece is not None else "-",
            PRODUCTION if alias and alias.version == version else "",
        )
    Console().print(table)


@models.command("show")
@click.argument("ref")
@click.option("--registry", default=None)
def show_model(ref: str, registry: str | None) -> None:
    """The model card of NAME@VERSION (or NAME for its production version), as JSON."""
    from worker.queue.producer import parse_model_ref

    reg, _ = _registry(get_settings(), registry)
    try:
        card = reg.read_card(reg.resolve(parse_model_ref(ref)))
    except SynthdetectError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(card.model_dump_json(indent=2))


@models.command("promote")
@click.argument("ref")
@click.option("--registry", default=None)
def promote_model(ref: str, registry: str | None) -> None:
    """Point NAME's production alias at NAME@VERSION; workers switch within seconds."""
    name, _, version = ref.partition("@")
    if not version:
        raise click.BadParameter("give NAME@VERSION", param_hint="REF")
    reg, _ = _registry(get_settings(), registry)
    try:
        record = reg.promote(ModelId(name=name, version=version))
    except SynthdetectError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"model": name, PRODUCTION: record.version, "history": record.history}))


@models.command("rollback")
@click.argument("name")
@click.option("--registry", default=None)
def rollback_model(name: str, registry: str | None) -> None:
    """Point NAME's production alias back at the version before the last promotion."""
    reg, _ = _registry(get_settings(), registry)
    try:
        record = reg.rollback(name)
    except SynthdetectError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"model": name, PRODUCTION: record.version, "history": record.history}))
