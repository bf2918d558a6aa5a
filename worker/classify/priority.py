"""Interactive work first, inside one worker process.

The queues keep a bulk scan from holding the threads an interactive job needs
(``worker.queue.pool``), and the batcher puts interactive images first
(``DynamicBatcher`` lanes). What remains is the CPU and the GIL: a bulk shard
streams thousands of images through Python (tar parsing, decoding, results),
and every storage call of a one-image job waits its turn for the GIL behind
those threads. So while any interactive job runs, bulk pipelines pause between
images (``yield_to_interactive``), for at most ``MAX_PAUSE_S`` at a time so a
steady stream of interactive jobs slows a bulk scan but never stops it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

MAX_PAUSE_S = 0.25
"""Longest a bulk stage waits for interactive work before it takes its next image anyway."""


class InteractiveFirst:
    """Counts interactive jobs in flight; bulk stages wait while there are any."""

    def __init__(self) -> None:
        self._active = 0
        self._changed = threading.Condition()

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """Mark the block as interactive work."""
        with self._changed:
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                if self._active == 0:
                    self._changed.notify_all()

    def lane(self, priority: str) -> AbstractContextManager[None]:
        """``interactive()`` for interactive jobs, nothing for bulk ones."""
        return self.interactive() if priority == "interactive" else nullcontext()

    @property
    def active(self) -> int:
        return self._active

    def yield_to_interactive(self, max_pause_s: float = MAX_PAUSE_S) -> None:
        """Return once no interactive work runs, or after ``max_pause_s``; at once when idle."""
        if self._active == 0:  # an unlocked read: a stale answer costs one image, no more
            return
        with self._changed:
            self._changed.wait_for(lambda: self._active == 0, timeout=max_pause_s)


PRIORITY = InteractiveFirst()
"""The process's gate: job runners mark interactive jobs, bulk pipelines yield to them."""
