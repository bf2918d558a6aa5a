"""Celery's threads pool with lanes: bulk shards run on threads of their own.

A bulk scan arrives as dozens of shard messages, each holding a thread for
seconds. In the plain threads pool they would take every thread, and a
one-image interactive job (or a callback) prefetched behind them would wait for
one to finish. ``LanePool`` runs tasks delivered from the bulk queue on
``bulk_concurrency`` threads of their own (further bulk messages wait in that
lane) and everything else on the ``--concurrency`` threads, so interactive jobs
and callbacks always find a free thread. Inside the process, interactive images
also go ahead of bulk ones in the batcher (``PipelineConfig.urgent``).

Selected by ``worker_pool`` in the app's configuration (``synthdetect worker``
leaves ``--pool`` unset so that it applies).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery.concurrency.base import apply_target
from celery.concurrency.thread import ApplyResult  # type: ignore[attr-defined]  # no stub
from celery.concurrency.thread import TaskPool as ThreadTaskPool

from worker.queue.topology import QueueNames
from worker.settings import get_settings

POOL_PATH = "worker.queue.pool:LanePool"


def delivered_from(args: tuple[Any, ...] | None) -> str | None:
    """The routing key a task message came with (Celery passes the request dict third)."""
    if not args or len(args) < 3 or not isinstance(args[2], dict):
        return None
    info = args[2].get("delivery_info") or {}
    key = info.get("routing_key")
    return key if isinstance(key, str) else None


class LanePool(ThreadTaskPool):
    """Threads for bulk-queue tasks apart from the threads for everything else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.bulk_queue = QueueNames.from_settings(settings).bulk
        self.bulk_executor = ThreadPoolExecutor(
            max_workers=settings.bulk_concurrency, thread_name_prefix="bulk"
        )

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **_: Any,
    ) -> ApplyResult:
        bulk = delivered_from(args) == self.bulk_queue
        main: ThreadPoolExecutor = self.executor  # type: ignore[attr-defined]  # not in the stubs
        executor = self.bulk_executor if bulk else main
        future = executor.submit(apply_target, target, args, kwargs, callback, accept_callback)
        return ApplyResult(future)

    def on_stop(self) -> None:
        self.bulk_executor.shutdown(cancel_futures=True)
        super().on_stop()
