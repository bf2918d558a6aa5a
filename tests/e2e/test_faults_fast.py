"""The fast cases of ``scripts/faults`` in CI: a SIGKILL, poison, hostile input, a 5xx callback.

The cases are the suite's own (``scripts.faults.cases``), run with ``quick=True``
against real worker processes, a SeaweedFS of their own and the machine's
RabbitMQ (unique queue prefixes; broker faults need the private node and stay in
``python -m scripts.faults``). Each test fails with the rows that failed and why.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from scripts.faults.cases import Row, Suite, bad_input, baseline, callbacks, poison, sigkill
from scripts.faults.stack import Stack
from tests.support.brokers import require_rabbitmq

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    require_rabbitmq()
    with Stack.running(tmp_path_factory.mktemp("faults"), private_broker=False) as stack:
        suite = Suite(stack, quick=True, rng=random.Random(7), sigkill_runs=1)
        baseline(suite)
        yield suite


def run(suite: Suite, case: Callable[[Suite], None]) -> list[Row]:
    before = len(suite.rows)
    case(suite)
    rows = suite.rows[before:]
    failed = [f"{row.case}: {row.note}" for row in rows if not row.passed]
    assert rows, "the case recorded nothing"
    assert not failed, "\n".join(failed)
    return rows


def test_the_baseline_job_passes_every_check(suite: Suite) -> None:
    (row,) = [r for r in suite.rows if r.case == "baseline"]
    assert row.passed, row.note


def test_a_sigkilled_worker_loses_nothing(suite: Suite) -> None:
    (row,) = run(suite, sigkill)
    assert row.note.startswith("killed ")


def test_poison_on_the_jobs_and_task_queues_is_dead_lettered_with_a_reason(suite: Suite) -> None:
    rows = run(suite, poison)
    assert {r.case for r in rows} >= {"poison:jobs", "poison:classify", "poison:after"}


def test_hostile_files_and_every_tar_member_get_exactly_one_row(suite: Suite) -> None:
    rows = run(suite, bad_input)
    assert [r.case for r in rows] == ["bad-input-files", "bad-input-tar"]


def test_a_failing_callback_is_retried_until_accepted_once(suite: Suite) -> None:
    (row,) = run(suite, callbacks)
    assert "500,503,200" in row.note
