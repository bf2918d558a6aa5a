"""Queue wait: how long a job, shard or retrain message waited before a worker started it.

Every task message this process publishes carries its send time in a header
(``synthdetect_sent_at``, seconds since the epoch); when a work task starts,
the difference to now goes to ``synthdetect_queue_wait_seconds{queue}``. A
retry's countdown (its ETA) is not waiting for a worker, so the wait counts
from the ETA when there is one. The sender's clock is compared with the
worker's: keep hosts on NTP.

Jobs published by other producers (plain JSON on ``<prefix>-jobs``) get the
header when the worker's ingest forwards them, so their wait in ``-jobs``
itself is not counted; it is short while any worker runs.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any

from celery import signals

from worker.metrics import QUEUE_WAIT_SECONDS
from worker.queue.topology import TASK_ACCEPT, TASK_RETRAIN, TASK_SHARD

SENT_AT_HEADER = "synthdetect_sent_at"


@signals.before_task_publish.connect(weak=False)
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


@signals.task_prerun.connect(weak=False)
def _observe(task: Any = None, args: Any = None, **_: Any) -> None:
    if task is None or task.name not in (TASK_ACCEPT, TASK_SHARD, TASK_RETRAIN):
        return
    sent_at = getattr(task.request, SENT_AT_HEADER, None)
    if not isinstance(sent_at, int | float):
        return
    started = sent_at
    eta = getattr(task.request, "eta", None)
    if isinstance(eta, str):
        with contextlib.suppress(ValueError):
            started = max(sent_at, datetime.fromisoformat(eta).timestamp())
    QUEUE_WAIT_SECONDS.labels(queue_label(task.name, args)).observe(max(time.time() - started, 0.0))


def queue_label(task_name: str, args: Any) -> str:
    """``classify``, ``bulk`` or ``retrain``: the kind of queue, without the prefix."""
    if task_name == TASK_RETRAIN:
        return "retrain"
    first = args[0] if args else None
    priority = first.get("priority") if isinstance(first, dict) else None
    return "bulk" if priority == "bulk" else "classify"
