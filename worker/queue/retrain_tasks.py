"""The retrain task, registered only in a worker that consumes the retrain queue.

``worker.queue.app`` imports this module when ``-Q`` selects the retrain queue,
so a classify worker never loads the training code. The task shares the
classify tasks' runtime and failure handling (``JobTask``).
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.queue.app import app
from worker.queue.tasks import JobTask, runtime
from worker.queue.topology import TASK_RETRAIN
from worker.retrain import jobs as retrain_jobs


@app.task(name=TASK_RETRAIN, base=JobTask)
def retrain(job: dict[str, Any]) -> None:
    """A RetrainJob; only workers started for the retrain queue receive it."""
    parsed = retrain_jobs.parse_retrain_job(job)
    with structlog.contextvars.bound_contextvars(job_id=parsed.job_id, model=parsed.model):
        retrain_jobs.run_retrain_job(parsed, runtime.retrain_services())
