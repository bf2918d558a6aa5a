"""``synthdetect models``: list, show, promote and roll back model versions."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from contracts import ModelId, ModelRef
from worker.cli.options import registry_option
from worker.errors import SynthdetectError
from worker.inference.registry import PRODUCTION, ModelRegistry
from worker.settings import Settings, get_settings
from worker.storage import Storage


def open_registry(settings: Settings, registry: str | None) -> tuple[ModelRegistry, Storage]:
    """The registry at ``registry`` (default: the settings' ``model_registry``) and its storage."""
    if registry:
        settings = settings.model_copy(update={"model_registry": registry})
    storage = Storage.from_settings(settings)
    return ModelRegistry.from_settings(settings, storage), storage


@click.group()
def models() -> None:
    """List, show, promote and roll back model versions."""


@models.command("list")
@click.argument("name", required=False)
@registry_option("Registry root (folder or s3://); default SYNTHDETECT_MODEL_REGISTRY.")
def list_models(name: str | None, registry: str | None) -> None:
    """Versions of NAME (default model if omitted) with their held-out accuracy."""
    settings = get_settings()
    reg, _ = open_registry(settings, registry)
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
@registry_option("Registry root (folder or s3://); default SYNTHDETECT_MODEL_REGISTRY.")
def show_model(ref: str, registry: str | None) -> None:
    """The model card of NAME@VERSION (or NAME for its production version), as JSON."""
    reg, _ = open_registry(get_settings(), registry)
    try:
        card = reg.read_card(reg.resolve(ModelRef.parse(ref)))
    except SynthdetectError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(card.model_dump_json(indent=2))


@models.command("promote")
@click.argument("ref")
@registry_option("Registry root (folder or s3://); default SYNTHDETECT_MODEL_REGISTRY.")
def promote_model(ref: str, registry: str | None) -> None:
    """Point NAME's production alias at NAME@VERSION; workers switch within seconds."""
    name, _, version = ref.partition("@")
    if not version:
        raise click.BadParameter("give NAME@VERSION", param_hint="REF")
    reg, _ = open_registry(get_settings(), registry)
    try:
        record = reg.promote(ModelId(name=name, version=version))
    except SynthdetectError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"model": name, PRODUCTION: record.version, "history": record.history}))


@models.command("rollback")
@click.argument("name")
@registry_option("Registry root (folder or s3://); default SYNTHDETECT_MODEL_REGISTRY.")
def rollback_model(name: str, registry: str | None) -> None:
    """Point NAME's production alias back at the version before the last promotion."""
    reg, _ = open_registry(get_settings(), registry)
    try:
        record = reg.rollback(name)
    except SynthdetectError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"model": name, PRODUCTION: record.version, "history": record.history}))
