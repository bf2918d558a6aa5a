"""The tests' polling helper: returns what the condition found, fails naming what it waited for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.waiting import WaitTimeout, wait_until


def test_returns_the_first_truthy_value_once_the_condition_holds() -> None:
    answers: Iterator[list[int]] = iter([[], [], [7]])
    assert wait_until(lambda: next(answers), 5.0, "a non-empty list", interval_s=0.001) == [7]


def test_a_condition_that_never_holds_fails_with_what_and_detail() -> None:
    calls = []

    def never() -> bool:
        calls.append(1)
        return False

    # an AssertionError, so pytest reports a failed test rather than an error
    with pytest.raises(AssertionError, match=r"waiting for the moon\nlog tail here") as failed:
        wait_until(never, 0.0, "the moon", interval_s=0.001, detail=lambda: "log tail here")
    assert failed.type is WaitTimeout
    assert len(calls) == 1  # a deadline already past still polls once
