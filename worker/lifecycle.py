"""The worker process's life: whether it is shutting down, and until when it may finish work.

One ``ShutdownState`` per process (``SHUTDOWN``). Nothing in it knows about
Celery: the queue layer calls ``SHUTDOWN.begin(grace_s)`` when the worker gets
SIGTERM (``worker.queue.tasks``, on Celery's ``worker_shutting_down``), and everything
else only reads it:

- readiness (``/readyz``) reports not ready while ``SHUTDOWN.is_set()``, so load
  balancers and autoscalers stop counting on the worker at once;
- a running shard asks ``SHUTDOWN.can_finish(estimate_s)`` before it takes its
  next image: finish within the grace, or stop and hand the message back;
- backoff sleeps use ``SHUTDOWN.sleep(seconds)``, which returns early (True)
  when shutdown begins, so no retry loop keeps a message past SIGTERM.

The state only ever goes from running to shutting down (a process is not
revived); ``reset`` exists for tests.
"""

from __future__ import annotations

import threading
import time


class ShutdownState:
    """Running, or shutting down since a moment with a deadline; thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._deadline: float | None = None

    def begin(self, grace_s: float) -> None:
        """Start shutting down: work may continue for ``grace_s`` seconds from now.

        A second call keeps the first deadline (a repeated SIGTERM grants no more time).
        """
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + max(grace_s, 0.0)
            self._event.set()

    def is_set(self) -> bool:
        """True once shutdown has begun (readiness fails from then on)."""
        return self._event.is_set()

    def remaining_s(self) -> float | None:
        """Seconds left of the grace; None while running, 0 once it has run out."""
        with self._lock:
            if self._deadline is None:
                return None
            return max(self._deadline - time.monotonic(), 0.0)

    def can_finish(self, estimate_s: float | None) -> bool:
        """Whether work estimated to take ``estimate_s`` more seconds may go on.

        Always True while running; during shutdown True only when an estimate is
        known and fits in the grace that is left.
        """
        remaining = self.remaining_s()
        if remaining is None:
            return True
        return estimate_s is not None and estimate_s <= remaining

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns True (early) if shutdown has begun."""
        return self._event.wait(max(seconds, 0.0))

    def reset(self) -> None:
        """Back to running (tests only: a real worker never comes back from shutdown)."""
        with self._lock:
            self._deadline = None
            self._event.clear()


SHUTDOWN = ShutdownState()
"""This process's shutdown state."""


def shutting_down() -> bool:
    """True once this worker process has begun its soft shutdown (SIGTERM)."""
    return SHUTDOWN.is_set()
