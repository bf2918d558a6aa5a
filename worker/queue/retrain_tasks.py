"""The retrain task, registered only in a worker that consumes the retrain queue.

``worker.queue.app`` imports this module when ``-Q`` selects the retrain queue,
so a classify worker never loads the training code. The task shares the
classify tasks' runtime and failure handling (``JobTask``): a transient storage
failure sends the job again within the storage retry window, then dead-letters it.
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.errors import StorageError
from worker.queue.app import app
from worker.queue.retrywindow import RetryState
from worker.queue.tasks import JobTask, on_storage_failure, runtime
from worker.queue.topology import TASK_RETRAIN
from worker.retrain import jobs as retrain_jobs


@app.task(name=TASK_RETRAIN, base=JobTask)
def retrain(job: dict[str, Any], retry: dict[str, Any] | None = None) -> None:
    """A RetrainJob; only workers started for the retrain queue receive it."""
    parsed = retrain_jobs.parse_retrain_job(job)
    with structlog.contextvars.bound_contextvars(job_id=parsed.job_id, model=parsed.model):
        try:
            retrain_jobs.run_retrain_job(parsed, runtime.retrain_services())
        except StorageError as exc:
            on_storage_failure(TASK_RETRAIN, exc, RetryState.from_message(retry), [job], None)
