"""``synthdetect submit`` and ``synthdetect submit-retrain``: send jobs from the shell.

Both build a contract message (``ClassifyJob`` / ``RetrainJob``), send it with
the Python producer (``worker.queue.producer``) and, with ``--wait``, poll for
its summary and print it.
"""

from __future__ import annotations

import uuid

import click
from pydantic import ValidationError

from contracts import (
    ClassifyJob,
    ManifestInput,
    ModelRef,
    OutputLocation,
    PrefixInput,
    RetrainJob,
    TarInput,
    UriListInput,
    describe_validation_error,
)
from contracts.jobs import JobInputs
from worker.classify.inputs import TAR_SUFFIXES
from worker.cli.options import (
    job_options,
    parse_duration,
    registry_option,
    retrain_options,
    wait_option,
)
from worker.settings import get_settings
from worker.storage import Storage

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")


def inputs_from_uris(uris: tuple[str, ...]) -> JobInputs:
    """One ``s3://`` argument ending in ``/`` is a prefix, ``.tar`` a tar, ``.jsonl``/``.csv``
    a manifest; anything else is a list of image URIs."""
    if len(uris) == 1:
        (uri,) = uris
        if uri.endswith("/"):
            return PrefixInput(prefix=uri)
        if uri.lower().endswith(TAR_SUFFIXES):
            return TarInput(tar=uri)
        if uri.lower().endswith(MANIFEST_SUFFIXES):
            return ManifestInput(manifest=uri)
    return UriListInput(uris=list(uris))


def dataset_kind(uri: str) -> str:
    """``tar`` for ``.tar`` (``.tar.gz``, ``.tgz``), ``manifest`` for ``.jsonl``/``.ndjson``/
    ``.csv``, otherwise ``prefix`` (one folder per label)."""
    if uri.lower().endswith(TAR_SUFFIXES):
        return "tar"
    if uri.lower().endswith(MANIFEST_SUFFIXES):
        return "manifest"
    return "prefix"


@click.command()
@click.option(
    "--inputs",
    "-i",
    "uris",
    multiple=True,
    required=True,
    help="s3:// URIs (repeat), a prefix/, a .tar or a manifest.",
)
@click.option("--output", "-o", required=True, help="Results location, s3://bucket/prefix.")
@job_options
@click.option("--model", "-m", default=None, help="Model name or name@version.")
@click.option(
    "--priority",
    type=click.Choice(["interactive", "bulk"]),
    default="interactive",
    show_default=True,
)
@wait_option("Wait this many seconds for the summary and print it.")
def submit(
    uris: tuple[str, ...],
    output: str,
    callback: str | None,
    secret_ref: str,
    job_id: str | None,
    model: str | None,
    priority: str,
    wait_s: float | None,
) -> None:
    """Send a classify job to the queue; prints the job as sent (and its summary with --wait)."""
    from worker.queue.producer import submit_job, wait_for_summary

    settings = get_settings()
    try:
        job = ClassifyJob.model_validate(
            {
                "job_id": job_id or str(uuid.uuid4()),
                "model": ModelRef.parse(model or settings.default_model),
                "inputs": inputs_from_uris(uris),
                "output": OutputLocation(uri=output),
                "callback": {"url": callback, "secret_ref": secret_ref} if callback else None,
                "priority": priority,
            }
        )
    except ValidationError as exc:
        raise click.UsageError(describe_validation_error(exc)) from exc
    submit_job(job, settings)
    click.echo(job.model_dump_json(exclude_none=True))
    if wait_s is not None:
        summary = wait_for_summary(job, Storage.from_settings(settings), wait_s)
        if summary is None:
            raise click.ClickException(f"no summary after {wait_s:g} s")
        click.echo(summary.model_dump_json(indent=2, exclude_none=True))


@click.command("submit-retrain")
@click.option(
    "--dataset",
    "-d",
    required=True,
    help="s3:// prefix with one folder per label, a .tar, or a .jsonl/.csv manifest.",
)
@retrain_options
@click.option("--holdout", default=None, help="s3:// prefix of held-out data; replaces the share.")
@job_options
@wait_option("Wait this many seconds for the summary and print it (needs the registry).")
@registry_option("Registry root, for --wait (default: SYNTHDETECT_MODEL_REGISTRY).")
def submit_retrain(
    dataset: str,
    name: str | None,
    budget_text: str,
    trials: int | None,
    folds: int,
    holdout_share: float,
    promotion: str,
    margin: float,
    seed: int,
    holdout: str | None,
    callback: str | None,
    secret_ref: str,
    job_id: str | None,
    wait_s: float | None,
    registry: str | None,
) -> None:
    """Send a retrain job to the retrain queue; prints the job (and its summary with --wait)."""
    from worker.queue.producer import submit_retrain_job, wait_for_retrain_summary

    settings = get_settings()
    registry = registry or settings.model_registry
    if wait_s is not None and not registry:
        raise click.UsageError("--wait reads the summary from the registry: give --registry")
    kind = dataset_kind(dataset)
    try:
        job = RetrainJob.model_validate(
            {
                "job_id": job_id or str(uuid.uuid4()),
                "model": name or settings.default_model,
                "dataset": {"kind": kind, kind: dataset},
                "budget": {"seconds": parse_duration(budget_text), "trials": trials},
                "cv_folds": folds,
                "holdout": {"share": holdout_share, "prefix": holdout},
                "promotion": {"mode": promotion, "margin": margin},
                "seed": seed,
                "callback": {"url": callback, "secret_ref": secret_ref} if callback else None,
            }
        )
    except ValidationError as exc:
        raise click.UsageError(describe_validation_error(exc)) from exc
    submit_retrain_job(job, settings)
    click.echo(job.model_dump_json(exclude_none=True))
    if wait_s is not None:
        summary = wait_for_retrain_summary(job, registry, Storage.from_settings(settings), wait_s)
        if summary is None:
            raise click.ClickException(f"no summary after {wait_s:g} s")
        click.echo(summary.model_dump_json(indent=2, exclude_none=True))
