"""Sending jobs from Python: ``submit_job`` and the ``synthdetect submit`` / ``queues`` commands.

``submit_job`` validates nothing it does not have to: a ``ClassifyJob`` is valid
by construction. It sends the job as a Celery task message to the queue of the
job's priority, over the broker in ``SYNTHDETECT_BROKER_URL``. Producers in
other languages publish the same JSON to ``<prefix>-jobs`` instead (README,
"Sending jobs"). Retrain jobs: ``worker.queue.retrain_producer``.
"""

from __future__ import annotations

import json
import time
import uuid

import click
from celery import Celery

from contracts import (
    Callback,
    ClassifyJob,
    JobSummary,
    ManifestInput,
    ModelRef,
    OutputLocation,
    PrefixInput,
    TarInput,
    UriListInput,
)
from contracts.jobs import JobInputs
from worker.classify.inputs import TAR_SUFFIXES
from worker.classify.results import JobLayout, read_summary
from worker.queue.topology import TASK_ACCEPT, QueueNames, declare_amqp_topology, setup_sqs_queues
from worker.settings import Settings, get_settings
from worker.storage import Storage

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")


def parse_model_ref(text: str) -> ModelRef:
    """``name`` or ``name@version`` -> ModelRef."""
    name, _, version = text.partition("@")
    return ModelRef(name=name, version=version or None)


def producer_app(settings: Settings) -> Celery:
    """A Celery app to send with (the worker's app, built for ``settings``)."""
    # Imported here: `synthdetect classify` (embedded mode) must not pay for loading Celery.
    from worker.queue.app import create_app

    return create_app(settings)


def submit_job(
    job: ClassifyJob, settings: Settings | None = None, app: Celery | None = None
) -> str:
    """Send ``job`` to the worker queue of its priority; returns its ``job_id``.

    Delivery to the broker is confirmed (RabbitMQ publisher confirms), so once
    this returns the job survives a broker restart.
    """
    settings = settings or get_settings()
    app = app or producer_app(settings)
    app.send_task(
        TASK_ACCEPT,
        args=[job.model_dump(mode="json", exclude_none=True)],
        queue=QueueNames.from_settings(settings).for_priority(job.priority),
        retry=True,
    )
    return job.job_id


def wait_for_summary(
    job: ClassifyJob, storage: Storage, timeout_s: float, poll_s: float = 1.0
) -> JobSummary | None:
    """Poll the results bucket until the job's summary appears (None on timeout)."""
    layout = JobLayout.of(job.output.uri, job.job_id)
    deadline = time.monotonic() + timeout_s
    while True:
        summary = read_summary(storage, layout)
        if summary is not None or time.monotonic() >= deadline:
            return summary
        time.sleep(poll_s)


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
@click.option("--callback", default=None, help="Webhook URL that receives the signed summary.")
@click.option(
    "--secret-ref",
    default="default",
    show_default=True,
    help="Name of the worker's signing secret.",
)
@click.option("--job-id", default=None, help="Idempotency key (default: a new UUID).")
@click.option("--model", "-m", default=None, help="Model name or name@version.")
@click.option(
    "--priority",
    type=click.Choice(["interactive", "bulk"]),
    default="interactive",
    show_default=True,
)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=None,
    help="Wait this many seconds for the summary and print it.",
)
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
    settings = get_settings()
    job = ClassifyJob.model_validate(
        {
            "job_id": job_id or str(uuid.uuid4()),
            "model": parse_model_ref(model or settings.default_model),
            "inputs": inputs_from_uris(uris),
            "output": OutputLocation(uri=output),
            "callback": Callback(url=callback, secret_ref=secret_ref) if callback else None,
            "priority": priority,
        }
    )
    submit_job(job, settings)
    click.echo(job.model_dump_json(exclude_none=True))
    if wait_s is not None:
        summary = wait_for_summary(job, Storage.from_settings(settings), wait_s)
        if summary is None:
            raise click.ClickException(f"no summary after {wait_s:g} s")
        click.echo(summary.model_dump_json(indent=2, exclude_none=True))


@click.group()
def queues() -> None:
    """Broker queues."""


@queues.command("setup")
def queues_setup() -> None:
    """Create the queues (and dead-letter queue) on the configured broker; idempotent."""
    settings = get_settings()
    if settings.broker_kind == "sqs":
        click.echo(json.dumps(setup_sqs_queues(settings), indent=2))
        return
    app = producer_app(settings)
    with app.connection_for_write() as connection:
        declare_amqp_topology(connection, settings)
    click.echo(json.dumps(list(QueueNames.from_settings(settings).__dict__.values())))
