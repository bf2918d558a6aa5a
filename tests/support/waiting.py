"""Waiting in tests: poll for the condition with a deadline instead of sleeping a fixed time.

A fixed sleep is too long on a quiet machine (a slow suite) and too short on a busy
one (a flaky test). ``wait_until`` returns as soon as the condition holds and, when
the deadline passes, fails with what it waited for and whatever the caller says
would explain it (a worker's log tail, say).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.1


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (an assertion, so pytest says failed)."""


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = POLL_INTERVAL_S,
    detail: Callable[[], str] | None = None,
) -> T:
    """The first truthy value ``condition`` returns; ``WaitTimeout`` after ``timeout_s``.

    ``condition`` is called at least once, and once more after the deadline has
    passed, so a slow last poll still counts. The error reads "timed out after
    ``timeout_s`` s waiting for ``what``", followed by ``detail()`` if given.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout_s:g} s waiting for {what}"
            if detail is not None:
                message += f"\n{detail()}"
            raise WaitTimeout(message)
        time.sleep(interval_s)
