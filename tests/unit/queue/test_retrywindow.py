"""The storage retry window: backoff, the window from the first failure, giving up."""

from __future__ import annotations

import random

import pytest

from worker.queue.retrywindow import GIVE_UP_LIMIT_S, GiveUp, Retry, RetryState, RetryWindow
from worker.queue.tasks import publish_retry_policy
from worker.settings import Settings

WINDOW = RetryWindow(window_s=600, base_s=2, max_s=60)


def test_delays_double_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for retries, ceiling in [(0, 2), (1, 4), (4, 32), (5, 60), (40, 60), (500, 60)]:
        delays = [WINDOW.delay(retries, rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one value


def test_the_window_counts_from_the_first_failure_not_the_retries() -> None:
    now = 1000.0
    state: RetryState | None = None
    decision: Retry | GiveUp = WINDOW.after_failure(state, now, True, "down", "storage_unavailable")
    while isinstance(decision, Retry):  # the message comes back after each delay, fails again
        assert decision.state.first_failure_at == 1000.0
        state = decision.state
        now += decision.delay_s
        decision = WINDOW.after_failure(state, now, True, "down", "storage_unavailable")
    assert 1600.0 <= now <= 1601.0  # the last retry falls at the window's end, no later
    assert decision.state.giving_up
    assert decision.state.reason == "down"
    assert state is not None
    assert 15 <= state.retries <= 30


def test_a_permanent_error_gives_up_at_once() -> None:
    decision = WINDOW.after_failure(None, 5.0, False, "access denied", "forbidden")
    assert isinstance(decision, GiveUp)
    assert decision.state.code == "forbidden"


def test_a_give_up_that_cannot_be_written_is_retried_at_the_cap_then_stops() -> None:
    state = RetryState(0.0, 20, True, "down", "storage_unavailable")
    again = WINDOW.after_failed_give_up(state, 700.0)
    assert again is not None
    assert again.delay_s == 60
    assert again.state.giving_up
    assert WINDOW.after_failed_give_up(state, 600 + GIVE_UP_LIMIT_S) is None


def test_the_state_travels_in_the_message_and_garbage_is_a_first_try() -> None:
    state = RetryState(12.5, 3, True, "why", "not_found")
    assert RetryState.from_message(state.to_message()) == state
    assert RetryState.from_message(None) is None
    assert RetryState.from_message({"retries": 2}) is None
    assert RetryState.from_message({"first_failure_at": "soon"}) is None


def test_the_window_follows_the_settings() -> None:
    settings = Settings(storage_retry_window_s=15, storage_retry_backoff_base_s=1)
    window = RetryWindow.from_settings(settings)
    assert (window.window_s, window.base_s, window.max_s) == (15, 1, 60)
    assert Settings().storage_retry_window_s >= 600


@pytest.mark.parametrize("seconds", [0, 10, 120, 600])
def test_publishes_keep_trying_for_about_the_configured_time(seconds: float) -> None:
    policy = publish_retry_policy(seconds)
    waits = [min(i, policy["interval_max"]) for i in range(int(policy["max_retries"]))]
    assert seconds <= sum(waits) <= seconds + policy["interval_max"]
