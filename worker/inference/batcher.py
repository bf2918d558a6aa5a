"""Dynamic batching: many threads submit single items, one thread runs them in batches.

A batch runs when it holds ``max_batch`` items or when its oldest item has
waited ``max_wait_ms``, whichever comes first, so a lone request is answered
within ``max_wait_ms`` plus one model call, while a busy worker fills whole
batches (throughput) without any caller knowing about the others. This is how
many small jobs share one batch (cross-job batching, as Triton does).

The queue in front of the batcher is bounded: when the model falls behind,
``submit`` blocks, and that backpressure travels up the pipeline to the fetchers
instead of growing memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from worker.logs import get_logger

T = TypeVar("T")
R = TypeVar("R")

log = get_logger(__name__)


class BatcherClosed(RuntimeError):
    """``submit`` was called after ``close``."""


class BatchFailed(RuntimeError):
    """``run_batch`` raised; every item of that batch receives this, chained to the cause."""


@dataclass
class BatchStats:
    """Counters a caller (metrics, tests) may read at any time."""

    batches: int = 0
    items: int = 0
    failed_batches: int = 0
    recent_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass(frozen=True)
class BatchEvent:
    """What one batch run looked like; passed to the ``on_batch`` hook."""

    size: int
    oldest_wait_s: float
    run_s: float
    failed: bool


_Entry = tuple[T, Future[R], float]
"""A queued item, the future its caller waits on, and when it was queued (monotonic)."""


class DynamicBatcher(Generic[T, R]):
    """Collects submitted items into batches for ``run_batch`` on a background thread.

    ``run_batch`` receives a list of items and must return one result per item, in
    order. If it raises, every future of that batch gets the exception; the
    batcher keeps running.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int = 4096,
        on_batch: Callable[[BatchEvent], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000.0
        self._on_batch = on_batch
        # None is the stop marker ``close`` puts behind the last item.
        self._queue: queue.Queue[_Entry[T, R] | None] = queue.Queue(max_queue)
        self._closed = threading.Event()
        self._submit_lock = threading.Lock()
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        """Queue one item; blocks while the queue is full. The future resolves to its result."""
        future: Future[R] = Future()
        # Checking and enqueueing under one lock guarantees nothing lands behind STOP.
        with self._submit_lock:
            if self._closed.is_set():
                raise BatcherClosed("the batcher is closed")
            self._queue.put((item, future, time.monotonic()))
        return future

    @property
    def alive(self) -> bool:
        """Whether the batching thread runs (False after ``close`` or if it died)."""
        return self._thread.is_alive()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop accepting items, finish everything already queued, stop the thread."""
        with self._submit_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def __enter__(self) -> DynamicBatcher[T, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = first[2] + self._max_wait_s
            stop_after = self._fill(batch, deadline)
            self._run(batch)
            if stop_after:
                return

    def _fill(self, batch: list[_Entry[T, R]], deadline: float) -> bool:
        """Add items until the batch is full or the deadline passes; True if STOP was seen."""
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get_nowait()
                    if remaining <= 0
                    else self._queue.get(timeout=remaining)
                )
            except queue.Empty:
                return False
            if item is None:
                # Drain what is still queued before stopping: close() promises to finish it.
                self._drain_rest(batch)
                return True
            batch.append(item)
        return False

    def _drain_rest(self, batch: list[_Entry[T, R]]) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                batch.append(item)
                if len(batch) >= self._max_batch:
                    self._run(batch)
                    batch.clear()

    def _run(self, batch: list[_Entry[T, R]]) -> None:
        # Items whose caller cancelled the future are skipped; the rest can no longer be
        # cancelled, so setting their results below cannot raise InvalidStateError.
        batch = [entry for entry in batch if entry[1].set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.monotonic()
        oldest_wait = started - batch[0][2]
        items = [item for item, _, _ in batch]
        failed = False
        try:
            results = self._run_batch(items)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)}")
        except Exception as exc:
            failed = True
            log.exception("batch_failed", size=len(items))
            error = BatchFailed(f"batch of {len(items)} failed: {exc!r}")
            error.__cause__ = exc
            for _, future, _ in batch:
                future.set_exception(error)
        else:
            for (_, future, _), result in zip(batch, results, strict=True):
                future.set_result(result)
        run_s = time.monotonic() - started
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.failed_batches += int(failed)
        self.stats.recent_sizes.append(len(items))
        log.debug(
            "batch_run",
            size=len(items),
            wait_ms=round(oldest_wait * 1e3, 2),
            run_ms=round(run_s * 1e3, 2),
        )
        if self._on_batch is not None:
            try:
                self._on_batch(BatchEvent(len(items), oldest_wait, run_s, failed))
            except Exception:
                # A broken hook (metrics) must not stop inference for the whole process.
                log.exception("on_batch_hook_failed")
