"""The tasks' storage retries and hand-backs, with the broker replaced by a list."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery.exceptions import Reject

from worker.errors import AccessDenied, StorageError
from worker.queue import tasks
from worker.queue.retrywindow import RetryState, RetryWindow
from worker.settings import Settings

Sent = list[tuple[str, list[Any], dict[str, Any], float]]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    published: Sent = []

    def republish(task: str, args: list[Any], kwargs: dict[str, Any], delay_s: float = 0) -> None:
        published.append((task, args, kwargs, delay_s))

    monkeypatch.setattr(tasks.runtime, "republish", republish)
    monkeypatch.setattr(tasks.runtime, "window", RetryWindow(window_s=15, base_s=1, max_s=2))
    return published


def test_a_transient_failure_is_sent_again_with_its_first_failure(sent: Sent) -> None:
    given_up: list[RetryState] = []
    tasks.on_storage_failure("t", StorageError("503 SlowDown"), None, ["a"], given_up.append)
    assert given_up == []
    [(task, args, kwargs, delay)] = sent
    assert (task, args) == ("t", ["a"])
    assert 0.5 <= delay <= 1
    state = RetryState.from_message(kwargs["retry"])
    assert state is not None
    assert abs(state.first_failure_at - time.time()) < 5
    assert state.retries == 1


def test_a_failure_after_the_window_gives_up_with_the_reason(sent: Sent) -> None:
    given_up: list[RetryState] = []
    old = RetryState(time.time() - 20, 7)
    tasks.on_storage_failure("t", StorageError("timeout"), old, ["a"], given_up.append)
    assert sent == []
    [state] = given_up
    assert state.giving_up
    assert state.code == "storage_unavailable"
    assert state.reason == "timeout"


def test_a_permanent_failure_gives_up_at_once(sent: Sent) -> None:
    given_up: list[RetryState] = []
    tasks.on_storage_failure("t", AccessDenied("no"), None, ["a"], given_up.append)
    assert sent == []
    assert [s.code for s in given_up] == ["forbidden"]


def test_a_give_up_that_cannot_be_written_is_sent_again_later(sent: Sent) -> None:
    def results_bucket_down(state: RetryState) -> None:
        raise StorageError("connection refused")

    old = RetryState(time.time() - 20, 7)
    tasks.on_storage_failure("t", StorageError("timeout"), old, ["a"], results_bucket_down)
    [(_, _, kwargs, delay)] = sent
    assert delay == 2
    state = RetryState.from_message(kwargs["retry"])
    assert state is not None
    assert state.giving_up


def test_without_a_give_up_record_the_error_is_raised_for_the_dead_letter_queue(
    sent: Sent,
) -> None:
    with pytest.raises(AccessDenied):
        tasks.on_storage_failure("t", AccessDenied("no"), None, ["a"], None)


def test_hand_back_rejects_with_requeue_on_rabbitmq_and_resends_on_sqs(
    sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Reject) as rejected:
        tasks._hand_back("t", ["a"], {}, "shutting down")
    assert rejected.value.requeue
    monkeypatch.setattr(tasks.runtime, "settings", Settings(broker_url="sqs://"))
    tasks._hand_back("t", ["a"], {}, "shutting down")
    assert sent == [("t", ["a"], {}, 0)]
