"""``synthdetect worker`` and ``synthdetect queues``: run a queue worker, set up the broker."""

from __future__ import annotations

import json

import click

from worker.settings import get_settings


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--queues",
    "-Q",
    "queue_names",
    default=None,
    help=(
        "Comma-separated queues to consume, exactly these (default: <prefix>-classify, "
        "-bulk, -callbacks and the plain-JSON -jobs and -retrain-jobs, whose valid jobs "
        "are forwarded to -classify/-bulk and -retrain). -Q <prefix>-retrain starts a "
        "retrain worker."
    ),
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 512),
    default=None,
    help=(
        "Tasks run at once (default: SYNTHDETECT_WORKER_CONCURRENCY; 1 for a retrain worker, "
        "whose one retrain uses every core through torch's threads)."
    ),
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(queue_names: str | None, concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """Run a queue worker (threads pool: one model shared by all running tasks).

    ``-Q <prefix>-retrain`` starts a retrain worker: it consumes that queue alone
    (the retrain queue is never consumed together with other task queues; the
    plain-JSON ``<prefix>-retrain-jobs`` may join it). Extra arguments go to
    ``celery worker`` unchanged, e.g. ``--hostname``.
    """
    from worker.queue.app import app
    from worker.queue.topology import QueueNames

    settings = get_settings()
    names = QueueNames.from_settings(settings)
    if concurrency is None:
        named = set((queue_names or "").split(",")) - set(names.plain_json_queues)
        concurrency = 1 if named == {names.retrain} else settings.worker_concurrency
    argv = [
        "worker",  # --pool left out: the app's worker_pool (threads, with a bulk lane) applies
        f"--concurrency={concurrency}",
        f"--queues={queue_names or ','.join(names.default_consumed)}",
        f"--loglevel={settings.log_level}",
        "--without-mingle",
        "--without-gossip",
        *celery_args,
    ]
    app.worker_main(argv)


@click.group()
def queues() -> None:
    """Broker queues."""


@queues.command("setup")
def queues_setup() -> None:
    """Create the queues (and dead-letter queue) on the configured broker; idempotent."""
    from worker.queue.app import create_app
    from worker.queue.topology import QueueNames, declare_amqp_topology, setup_sqs_queues

    settings = get_settings()
    if settings.broker_kind == "sqs":
        click.echo(json.dumps(setup_sqs_queues(settings), indent=2))
        return
    app = create_app(settings)
    with app.connection_for_write() as connection:
        declare_amqp_topology(connection, settings)
    click.echo(json.dumps(list(QueueNames.from_settings(settings).__dict__.values())))
