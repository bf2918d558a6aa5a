"""Dynamic batching: many threads submit single items, one thread runs them in batches.

A batch runs when it holds ``max_batch`` items or when its oldest item has
waited ``max_wait_ms``, whichever comes first, so a lone request is answered
within ``max_wait_ms`` plus one model call, while a busy worker fills whole
batches (throughput) without any caller knowing about the others. This is how
many small jobs share one batch (cross-job batching, as Triton does).

The queue in front of the batcher is bounded: when the model falls behind,
``submit`` blocks, and that backpressure travels up the pipeline to the fetchers
instead of growing memory.

Two lanes: items submitted with ``urgent=True`` (interactive jobs) are taken
before any waiting bulk item, so a one-image job never queues behind the
thousands of images a bulk scan keeps in flight; a batch that has room takes
bulk items after the urgent ones, and a batch led by an urgent item waits at
most ``URGENT_WAIT_S`` for company instead of ``max_wait_ms``.

``runners`` threads form and run batches at once (on a CPU, one per core with
one torch thread each beats one caller with several intra-op threads, which spin
at every barrier while other threads of the process decode). ``urgent_runners``
more serve the urgent lane alone: with every other runner busy on a bulk batch
(tens of ms at 64 images), an interactive image still starts at once. Before a
batch of bulk items, ordinary runners call ``yield_bulk`` (the worker passes its
interactive-first gate), so interactive jobs get the cores while they run.
"""

from __future__ import annotations

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

URGENT_WAIT_S = 0.001
"""The longest a batch led by an urgent item waits for more items (max_wait_ms otherwise)."""


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
        runners: int = 1,
        urgent_runners: int = 0,
        yield_bulk: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if runners < 1:
            raise ValueError("runners must be >= 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000.0
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._yield_bulk = yield_bulk
        self._urgent: deque[_Entry[T, R]] = deque()
        self._bulk: deque[_Entry[T, R]] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._urgent_arrived = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._closed = False
        self.stats = BatchStats()
        self._threads = [
            threading.Thread(target=self._loop, args=(False,), name=f"{name}-{i}", daemon=True)
            for i in range(runners)
        ] + [
            threading.Thread(
                target=self._loop, args=(True,), name=f"{name}-urgent-{i}", daemon=True
            )
            for i in range(urgent_runners)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T, urgent: bool = False) -> Future[R]:
        """Queue one item; blocks while the queue is full. The future resolves to its result.

        ``urgent`` items go ahead of every waiting non-urgent one, and are never
        blocked by a queue full of them.
        """
        future: Future[R] = Future()
        with self._lock:
            while not urgent and len(self._bulk) >= self._max_queue and not self._closed:
                self._room.wait()
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            (self._urgent if urgent else self._bulk).append((item, future, time.monotonic()))
            self._arrived.notify()
            if urgent:
                self._urgent_arrived.notify()
        return future

    @property
    def queued(self) -> int:
        """Items waiting for a batch (both lanes)."""
        with self._lock:
            return len(self._urgent) + len(self._bulk)

    @property
    def alive(self) -> bool:
        """Whether every batch runner thread runs (False after ``close`` or if one died)."""
        return all(thread.is_alive() for thread in self._threads)

    def close(self, timeout: float | None = 30.0, discard_queued: bool = False) -> None:
        """Stop accepting items, finish everything already queued, stop the threads.

        ``discard_queued`` cancels the queued items instead of running them (their
        futures raise ``CancelledError``): for a worker shutting down after its tasks
        handed their messages back, when nobody waits for those results any more.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if discard_queued:
                for _, future, _ in (*self._urgent, *self._bulk):
                    future.cancel()
                self._urgent.clear()
                self._bulk.clear()
            self._arrived.notify_all()
            self._urgent_arrived.notify_all()
            self._room.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> DynamicBatcher[T, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _loop(self, urgent_only: bool) -> None:
        while True:
            if not urgent_only and self._yield_bulk is not None and not self._urgent:
                self._yield_bulk()  # before a bulk batch: lets interactive work have the cores
            batch = self._next_urgent_batch() if urgent_only else self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_urgent_batch(self) -> list[_Entry[T, R]] | None:
        """For urgent runners: urgent items only, so one is free whenever the others are
        busy with bulk batches; None once closed."""
        with self._lock:
            while not self._urgent:
                if self._closed:
                    return None
                self._urgent_arrived.wait()
            batch = [self._urgent.popleft()]
            deadline = batch[0][2] + min(self._max_wait_s, URGENT_WAIT_S)
            while len(batch) < self._max_batch:
                if self._urgent:
                    batch.append(self._urgent.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._urgent_arrived.wait(remaining)
            return batch

    def _next_batch(self) -> list[_Entry[T, R]] | None:
        """Wait for an item, then fill the batch until it is full or its oldest item waited
        ``max_wait``; None once closed with nothing left (everything queued is run first)."""
        with self._lock:
            while not self._urgent and not self._bulk:
                if self._closed:
                    return None
                self._arrived.wait()
            urgent = bool(self._urgent)
            batch = [self._take()]
            # An interactive image waits only a moment for company: a one-image job's
            # latency is the point, and images arriving together still share the batch.
            wait = min(self._max_wait_s, URGENT_WAIT_S) if urgent else self._max_wait_s
            deadline = batch[0][2] + wait
            while len(batch) < self._max_batch:
                if self._urgent or self._bulk:
                    batch.append(self._take())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._arrived.wait(remaining)
            self._room.notify_all()
            return batch

    def _take(self) -> _Entry[T, R]:
        """The oldest urgent item, else the oldest bulk one (caller holds the lock)."""
        return self._urgent.popleft() if self._urgent else self._bulk.popleft()

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
        with self._lock:
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
