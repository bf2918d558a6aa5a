"""Retrying a task across a storage outage: a time window, not a count.

A count of retries says nothing about how long an outage a task survives (six
retries from 2 s covered about 30 s). ``RetryWindow`` retries with capped
exponential backoff and equal jitter for ``window_s`` seconds *from the first
failure*; the moment of that failure travels with the task's message
(``RetryState``, in the task's kwargs), so the window holds across workers,
restarts and redeliveries, and a retry costs no worker thread while it waits
(the broker holds the delayed message).

When the window is spent the task gives up: it records its failure for the job
(``worker.classify.runner.give_up_shard``). Writing that record needs the
results bucket, which may still be down; the give-up itself is then retried
(``giving_up``) at the longest backoff until the record is written or
``GIVE_UP_LIMIT_S`` has passed, so the job is answered as soon as storage returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from worker.settings import Settings

GIVE_UP_LIMIT_S = 7 * 24 * 3600.0
"""How long a give-up keeps waiting for the results bucket before the task is dead-lettered."""


@dataclass(frozen=True)
class RetryState:
    """What a retried message carries: when it first failed, how often, and whether it gave up."""

    first_failure_at: float
    """Unix time of the first failure."""
    retries: int = 0
    giving_up: bool = False
    reason: str = ""
    """The failure that made the task give up (kept for the record it still has to write)."""
    code: str = ""

    @classmethod
    def from_message(cls, value: Any) -> RetryState | None:
        """The state in a message's kwargs; None (a first try) for anything else."""
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                first_failure_at=float(value["first_failure_at"]),
                retries=int(value.get("retries", 0)),
                giving_up=bool(value.get("giving_up", False)),
                reason=str(value.get("reason", "")),
                code=str(value.get("code", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def to_message(self) -> dict[str, Any]:
        return {
            "first_failure_at": self.first_failure_at,
            "retries": self.retries,
            "giving_up": self.giving_up,
            "reason": self.reason,
            "code": self.code,
        }


@dataclass(frozen=True)
class Retry:
    """Send the task again after ``delay_s`` with ``state``."""

    delay_s: float
    state: RetryState


@dataclass(frozen=True)
class GiveUp:
    """The window is spent (or the error is permanent): record the failure for the job."""

    state: RetryState


@dataclass(frozen=True)
class RetryWindow:
    """Capped exponential backoff with jitter over a window from the first failure."""

    window_s: float
    base_s: float
    max_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryWindow:
        return cls(
            settings.storage_retry_window_s,
            settings.storage_retry_backoff_base_s,
            settings.storage_retry_backoff_max_s,
        )

    def delay(self, retries: int, rng: random.Random | None = None) -> float:
        """Delay before retry ``retries + 1``: uniform in [c/2, c], c = min(max, base * 2^n)."""
        ceiling = min(self.max_s, self.base_s * 2 ** min(retries, 60))
        return (rng or random).uniform(ceiling / 2, ceiling)

    def after_failure(
        self,
        state: RetryState | None,
        now: float,
        transient: bool,
        reason: str,
        code: str,
        rng: random.Random | None = None,
    ) -> Retry | GiveUp:
        """What to do after a failure at ``now`` (Unix time) of a task that carried ``state``.

        Permanent failures give up at once. Transient ones retry until ``window_s``
        has passed since the first failure; the last retry is timed to fall at the
        window's end, so a task never gives up much later than the window says.
        """
        first = state.first_failure_at if state is not None else now
        retries = state.retries if state is not None else 0
        if not transient or now - first >= self.window_s:
            return GiveUp(RetryState(first, retries, True, reason, code))
        delay = min(self.delay(retries, rng), max(first + self.window_s - now, 0.0))
        return Retry(max(delay, 0.5), RetryState(first, retries + 1, False, reason, code))

    def after_failed_give_up(self, state: RetryState, now: float) -> Retry | None:
        """The give-up record could not be written either: try again later, or stop (None)."""
        if now - state.first_failure_at >= self.window_s + GIVE_UP_LIMIT_S:
            return None
        return Retry(
            self.max_s,
            RetryState(state.first_failure_at, state.retries + 1, True, state.reason, state.code),
        )
