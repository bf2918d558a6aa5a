"""The queue's retrain job as plain functions: train once, record the summary, deliver it.

The ``retrain`` Celery task (``worker.queue.tasks``) only parses its message and
calls ``run_retrain_job``; the broker is reached through ``enqueue_delivery``,
so the whole flow runs in tests without a broker.

::

    run_retrain_job ─► registry set? callback secret? budget fits retrain_timeout_s?
        ─► job.json (a job_id reused for a different job is rejected)
        ─► summary.json there already? only make sure of the callback
        ─► RetrainJob -> RetrainRequest ─► run_retrain (``retrain_progress`` log events)
        ─► summary.json ─► deliver_callback (now, then on the retry schedule) ─► delivery.json

Its records (``job.json``, ``summary.json``, ``delivery.json``) and its callback
live in ``worker.retrain.records``.

A redelivered job whose summary exists never trains again; one whose worker
died before the summary was written trains again from the start. Data that
cannot train (fewer than two labels, a malformed or missing manifest or tar)
ends in a summary with status ``failed``, delivered like any other. What a job
can never succeed with on this worker (no registry, no callback secret, a
budget beyond ``retrain_timeout_s``) raises ``JobRejected``: the task
dead-letters it with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any, assert_never

from pydantic import ValidationError

from contracts import (
    Budget,
    ManifestDataset,
    ManifestInput,
    PrefixDataset,
    RetrainJob,
    RetrainSummary,
    TarDataset,
    describe_validation_error,
)
from contracts.jobs import RetrainDataset
from worker.classify.inputs import InputItem, expand_job_inputs, expand_paths, iter_tar_items
from worker.errors import JobRejected, ModelError, ObjectNotFound
from worker.inference.device import configure_cpu_threads
from worker.inference.registry import ModelRegistry
from worker.logs import get_logger
from worker.metrics import record_retrain
from worker.retrain.records import RetrainLayout, RetrainServices, jobs_root, read_record
from worker.retrain.run import RetrainRequest, run_retrain
from worker.settings import Settings
from worker.storage import Storage
from worker.webhooks.attempts import CallbackTarget, delivery_pending

log = get_logger(__name__)

JSON = "application/json"
AFTER_BUDGET_S = 600
"""What a retrain may take beyond its time budget (production's evaluation, report, publishing)
before ``retrain_timeout_s`` runs out."""


def parse_retrain_job(data: Any) -> RetrainJob:
    """A ``RetrainJob`` from decoded JSON; ``JobRejected`` lists every invalid field.

    Strict in the JSON sense (``Contract.from_json_value``): ``"seconds": "60"`` or
    ``"cv_folds": 5.0`` are rejected, ISO datetimes and enum strings are accepted.
    """
    try:
        return RetrainJob.from_json_value(data)
    except ValidationError as exc:
        raise JobRejected(f"schema violation: {describe_validation_error(exc)}") from exc


def fit_budget(budget: Budget, timeout_s: int) -> Budget:
    """The budget a job runs with on this worker.

    A trials-only budget gets the time ``retrain_timeout_s`` leaves as its time
    limit; a time budget that does not fit raises ``JobRejected``.
    """
    limit = timeout_s - AFTER_BUDGET_S
    if budget.seconds is None:
        return budget.model_copy(update={"seconds": float(limit)})
    if budget.seconds > limit:
        raise JobRejected(
            f"budget of {budget.seconds:g} s does not fit this worker's "
            f"SYNTHDETECT_RETRAIN_TIMEOUT_S={timeout_s} (budgets up to {limit} s)"
        )
    return budget


def dataset_items(dataset: RetrainDataset, storage: Storage, max_bytes: int) -> Iterator[InputItem]:
    """The labelled images of a dataset, streamed: a prefix's folders or a tar's folders
    name the labels, a manifest's rows carry them."""
    if isinstance(dataset, PrefixDataset):
        yield from expand_paths([dataset.prefix], storage, max_bytes, labels_from_folders=True)
    elif isinstance(dataset, ManifestDataset):
        yield from expand_job_inputs(ManifestInput(manifest=dataset.manifest), storage, max_bytes)
    elif isinstance(dataset, TarDataset):
        with storage.open_stream(dataset.tar) as stream:
            yield from iter_tar_items(stream, dataset.tar, max_bytes, labels_from_folders=True)
    else:
        assert_never(dataset)


def dataset_uri(dataset: RetrainDataset) -> str:
    """The one address a dataset names (the model card's ``training.data.source``)."""
    if isinstance(dataset, PrefixDataset):
        return dataset.prefix
    if isinstance(dataset, ManifestDataset):
        return dataset.manifest
    return dataset.tar


def retrain_request(
    job: RetrainJob, settings: Settings, storage: Storage, budget: Budget
) -> RetrainRequest:
    """The ``run_retrain`` request for a validated job (items are read when called)."""
    limit = settings.max_image_bytes
    holdout = job.holdout.prefix
    return RetrainRequest(
        model=job.model,
        source=dataset_uri(job.dataset),
        items=partial(dataset_items, job.dataset, storage, limit),
        holdout_items=(
            None
            if holdout is None
            else partial(expand_paths, [holdout], storage, limit, labels_from_folders=True)
        ),
        holdout_share=job.holdout.share,
        budget=budget,
        folds=job.cv_folds,
        promotion=job.promotion,
        seed=job.seed,
        job_id=job.job_id,
    )


def run_retrain_job(job: RetrainJob, services: RetrainServices) -> RetrainSummary:
    """Run a validated job once (see the module docstring); returns its summary."""
    settings, storage = services.settings, services.storage
    if not settings.model_registry:
        raise JobRejected(
            "retrain needs a model registry to publish to: "
            "SYNTHDETECT_MODEL_REGISTRY is unset on this worker"
        )
    if job.callback and settings.webhook_secret_for(job.callback.secret_ref) is None:
        raise JobRejected(f"callback secret_ref {job.callback.secret_ref!r} is not configured")
    budget = fit_budget(job.budget, settings.retrain_timeout_s)
    registry = ModelRegistry.from_settings(settings, storage)
    root = jobs_root(registry.primary_root, job.model)
    layout = RetrainLayout.of(root, job.job_id)
    accepted = read_record(storage, layout.job, RetrainJob)
    if accepted is not None and accepted != job:
        raise JobRejected(f"job_id {job.job_id!r} was already used for a different job")
    summary = read_record(storage, layout.summary, RetrainSummary)
    if summary is not None:
        log.info("job_already_finished", status=summary.status)
    else:
        if accepted is None:
            storage.put_bytes(layout.job, job.model_dump_json(exclude_none=True).encode(), JSON)
        summary = _train(job, budget, settings, storage, registry)
        storage.put_bytes(layout.summary, summary.model_dump_json(exclude_none=True).encode(), JSON)
        record_retrain(summary.promoted, summary.status == "failed", summary.duration_s)
        log.info(
            "retrain_finished",
            status=summary.status,
            version=summary.model.version if summary.model else None,
            promoted=summary.promoted,
            decision=summary.decision,
            duration_s=summary.duration_s,
        )
    if job.callback is not None:
        target = CallbackTarget(job.job_id, job.callback, layout.delivery, layout.delivery_claims)
        if delivery_pending(storage, target):
            services.enqueue_delivery(job.job_id, root, 0.0)
    return summary


def _train(
    job: RetrainJob,
    budget: Budget,
    settings: Settings,
    storage: Storage,
    registry: ModelRegistry,
) -> RetrainSummary:
    started = time.monotonic()
    configure_cpu_threads(settings.torch_threads)
    log.info("retrain_started", budget_s=budget.seconds, trials=budget.trials, folds=job.cv_folds)

    def progress(message: str) -> None:
        # job_id explicitly too: the training code may call back from its own threads.
        log.info("retrain_progress", job_id=job.job_id, model=job.model, message=message)

    try:
        return run_retrain(
            retrain_request(job, settings, storage, budget),
            settings,
            storage,
            registry,
            on_progress=progress,
        )
    except (ModelError, JobRejected, ObjectNotFound) as exc:
        log.warning("retrain_failed", error=str(exc))
        return RetrainSummary(
            job_id=job.job_id,
            status="failed",
            decision=f"failed, nothing promoted: {exc}",
            error=str(exc),
            duration_s=round(time.monotonic() - started, 2),
        )
