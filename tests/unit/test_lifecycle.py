"""The shutdown state: one way from running to shutting down, with a grace deadline."""

from __future__ import annotations

import threading
import time

from worker.lifecycle import ShutdownState


def test_running_lets_everything_finish_and_sleeps_the_full_time() -> None:
    state = ShutdownState()
    assert not state.is_set()
    assert state.remaining_s() is None
    assert state.can_finish(None)
    assert state.can_finish(1e9)
    assert state.sleep(0.01) is False


def test_shutdown_keeps_only_work_that_fits_in_the_grace() -> None:
    state = ShutdownState()
    state.begin(grace_s=30)
    assert state.is_set()
    remaining = state.remaining_s()
    assert remaining is not None
    assert 29 < remaining <= 30
    assert state.can_finish(5)
    assert not state.can_finish(60)
    assert not state.can_finish(None)  # no estimate: hand the work back


def test_a_second_sigterm_grants_no_more_time() -> None:
    state = ShutdownState()
    state.begin(grace_s=0)
    state.begin(grace_s=100)
    assert state.remaining_s() == 0


def test_shutdown_wakes_a_sleeping_retry_at_once() -> None:
    state = ShutdownState()
    threading.Timer(0.05, state.begin, args=(10,)).start()
    started = time.monotonic()
    assert state.sleep(60) is True
    assert time.monotonic() - started < 30
