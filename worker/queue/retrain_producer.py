"""Sending retrain jobs: ``submit_retrain`` and the ``synthdetect submit-retrain`` command.

A ``RetrainJob`` goes to ``<prefix>-retrain`` as a Celery task message, where
only retrain workers (``synthdetect worker -Q <prefix>-retrain``) consume it.
Its summary appears at ``<registry>/<name>/jobs/<job_id>/summary.json`` and,
with a callback, is POSTed signed like a classify job's.
"""

from __future__ import annotations

import time
import uuid

import click
from celery import Celery
from pydantic import ValidationError

from contracts import RetrainJob, RetrainSummary
from worker.classify.inputs import TAR_SUFFIXES
from worker.errors import ObjectNotFound
from worker.queue.ingest import describe_validation_error
from worker.queue.producer import MANIFEST_SUFFIXES, producer_app
from worker.queue.topology import TASK_RETRAIN, QueueNames
from worker.settings import Settings, get_settings
from worker.storage import Storage


def submit_retrain(
    job: RetrainJob, settings: Settings | None = None, app: Celery | None = None
) -> str:
    """Send ``job`` to the retrain queue (publisher-confirmed); returns its ``job_id``."""
    settings = settings or get_settings()
    app = app or producer_app(settings)
    app.send_task(
        TASK_RETRAIN,
        args=[job.model_dump(mode="json", exclude_none=True)],
        queue=QueueNames.from_settings(settings).retrain,
        retry=True,
    )
    return job.job_id


def wait_for_retrain_summary(
    job: RetrainJob, registry: str, storage: Storage, timeout_s: float, poll_s: float = 2.0
) -> RetrainSummary | None:
    """Poll ``<registry>/<name>/jobs/<job_id>/summary.json`` (None on timeout)."""
    # Imported here: sending a job must not pay for importing the training code.
    from worker.retrain.jobs import RetrainLayout, jobs_root

    uri = RetrainLayout.of(jobs_root(registry, job.model), job.job_id).summary
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return RetrainSummary.model_validate_json(storage.get_bytes(uri))
        except ObjectNotFound:
            if time.monotonic() >= deadline:
                return None
        time.sleep(poll_s)


def dataset_kind(uri: str) -> str:
    """``tar`` for ``.tar`` (``.tar.gz``, ``.tgz``), ``manifest`` for ``.jsonl``/``.ndjson``/
    ``.csv``, otherwise ``prefix`` (one folder per label)."""
    if uri.lower().endswith(TAR_SUFFIXES):
        return "tar"
    if uri.lower().endswith(MANIFEST_SUFFIXES):
        return "manifest"
    return "prefix"


@click.command("submit-retrain")
@click.option(
    "--dataset",
    "-d",
    required=True,
    help="s3:// prefix with one folder per label, a .tar, or a .jsonl/.csv manifest.",
)
@click.option("--name", default=None, help="Model name (default: SYNTHDETECT_DEFAULT_MODEL).")
@click.option(
    "--budget",
    "budget_text",
    default="5m",
    show_default=True,
    help="Time for the whole run (e.g. 60s, 5m, 1h).",
)
@click.option("--trials", type=click.IntRange(1, 1000), default=None, help="Most candidates.")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--holdout-share", type=click.FloatRange(0.01, 0.89), default=0.2, show_default=True)
@click.option("--holdout", default=None, help="s3:// prefix of held-out data; replaces the share.")
@click.option(
    "--promotion",
    type=click.Choice(["if_not_worse", "always", "never"]),
    default="if_not_worse",
    show_default=True,
)
@click.option("--margin", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--callback", default=None, help="Webhook URL that receives the signed summary.")
@click.option("--secret-ref", default="default", show_default=True)
@click.option("--job-id", default=None, help="Idempotency key (default: a new UUID).")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=None,
    help="Wait this many seconds for the summary and print it (needs the registry).",
)
@click.option(
    "--registry",
    default=None,
    help="Registry root, for --wait (default: SYNTHDETECT_MODEL_REGISTRY).",
)
def submit_retrain_command(
    dataset: str,
    name: str | None,
    budget_text: str,
    trials: int | None,
    folds: int,
    holdout_share: float,
    holdout: str | None,
    promotion: str,
    margin: float,
    seed: int,
    callback: str | None,
    secret_ref: str,
    job_id: str | None,
    wait_s: float | None,
    registry: str | None,
) -> None:
    """Send a retrain job to the retrain queue; prints the job (and its summary with --wait)."""
    from worker.cli.retrain import parse_duration

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
    submit_retrain(job, settings)
    click.echo(job.model_dump_json(exclude_none=True))
    if wait_s is not None:
        summary = wait_for_retrain_summary(job, registry, Storage.from_settings(settings), wait_s)
        if summary is None:
            raise click.ClickException(f"no summary after {wait_s:g} s")
        click.echo(summary.model_dump_json(indent=2, exclude_none=True))
