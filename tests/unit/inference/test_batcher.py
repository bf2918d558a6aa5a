"""DynamicBatcher: results go back to their own submitter, batches flush by size or time,
failures reach every item of their batch only, close() drains, a full queue blocks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import pytest

from tests.support.waiting import wait_until
from worker.inference.batcher import BatcherClosed, BatchEvent, BatchFailed, DynamicBatcher

WAIT_S = 10.0
"""Generous upper bound for anything that should happen at once (never hit when green)."""

Item = tuple[int, int]
Result = tuple[int, int, int]


def doubled(items: list[Item]) -> list[Result]:
    """(submitter, n) -> (submitter, n, 2n): a mixed-up result names its rightful owner."""
    return [(owner, n, 2 * n) for owner, n in items]


class Recorder:
    """A ``run_batch`` that records the batches it was given."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Result]] = doubled) -> None:
        self.run = run
        self.batches: list[list[Item]] = []

    def __call__(self, items: list[Item]) -> Sequence[Result]:
        self.batches.append(list(items))
        return self.run(items)

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


def test_every_submitter_gets_exactly_its_own_results() -> None:
    threads, per_thread = 32, 60
    recorder = Recorder()
    results: dict[int, list[Result]] = {}
    start = threading.Barrier(threads)

    def submit_many(owner: int) -> None:
        start.wait()
        futures = [batcher.submit((owner, n)) for n in range(per_thread)]
        results[owner] = [future.result(WAIT_S) for future in futures]

    with DynamicBatcher(recorder, max_batch=16, max_wait_ms=2) as batcher:
        workers = [threading.Thread(target=submit_many, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT_S)
        assert not any(worker.is_alive() for worker in workers)

    for owner in range(threads):
        assert results[owner] == [(owner, n, 2 * n) for n in range(per_thread)]
    assert sum(recorder.sizes) == threads * per_thread
    assert max(recorder.sizes) <= 16
    assert batcher.stats.items == threads * per_thread
    assert batcher.stats.batches == len(recorder.batches)


def test_a_full_batch_runs_without_waiting_for_the_timeout() -> None:
    recorder = Recorder()
    with DynamicBatcher(recorder, max_batch=8, max_wait_ms=60_000) as batcher:
        futures = [batcher.submit((0, n)) for n in range(8)]
        assert [f.result(WAIT_S) for f in futures] == [(0, n, 2 * n) for n in range(8)]
        assert recorder.sizes == [8]
        assert batcher.stats.batches == 1
        assert batcher.stats.items == 8
        assert batcher.stats.mean_batch_size == 8.0
        assert list(batcher.stats.recent_sizes) == [8]


def test_a_partial_batch_runs_once_its_oldest_item_waited_max_wait() -> None:
    recorder = Recorder()
    max_wait_s = 0.1
    events: list[BatchEvent] = []
    with DynamicBatcher(
        recorder, max_batch=8, max_wait_ms=max_wait_s * 1000, on_batch=events.append
    ) as batcher:
        started = time.monotonic()
        futures = [batcher.submit((0, n)) for n in range(3)]
        assert [f.result(WAIT_S) for f in futures] == [(0, 0, 0), (0, 1, 2), (0, 2, 4)]
        waited = time.monotonic() - started
    assert recorder.sizes == [3]
    assert waited >= max_wait_s * 0.99  # it waited for more items before running a short batch
    [event] = events
    assert event.size == 3
    assert not event.failed
    assert event.oldest_wait_s >= max_wait_s * 0.99


def test_a_failing_batch_fails_each_of_its_items_and_the_next_batch_runs() -> None:
    def explode_on_negative(items: list[Item]) -> list[Result]:
        if any(n < 0 for _, n in items):
            raise ValueError("model exploded")
        return doubled(items)

    events: list[BatchEvent] = []
    with DynamicBatcher(
        Recorder(explode_on_negative), max_batch=4, max_wait_ms=60_000, on_batch=events.append
    ) as batcher:
        doomed = [batcher.submit((0, n)) for n in (1, -1, 2, 3)]
        for future in doomed:
            with pytest.raises(BatchFailed, match="model exploded") as exc:
                future.result(WAIT_S)
            assert isinstance(exc.value.__cause__, ValueError)
        fine = [batcher.submit((0, n)) for n in (4, 5, 6, 7)]
        assert [f.result(WAIT_S) for f in fine] == [(0, n, 2 * n) for n in (4, 5, 6, 7)]
        assert batcher.stats.failed_batches == 1
        assert batcher.stats.batches == 2
    assert [event.failed for event in events] == [True, False]


def test_a_wrong_number_of_results_fails_the_batch() -> None:
    with DynamicBatcher(
        lambda items: doubled(items)[:-1], max_batch=3, max_wait_ms=60_000
    ) as batcher:
        futures = [batcher.submit((0, n)) for n in range(3)]
        for future in futures:
            with pytest.raises(BatchFailed, match="2 results for 3") as exc:
                future.result(WAIT_S)
            assert exc.value.__cause__ is not None


def test_close_finishes_every_queued_item() -> None:
    gate = threading.Event()
    running = threading.Event()

    def slow(items: list[Item]) -> list[Result]:
        running.set()
        assert gate.wait(WAIT_S)
        return doubled(items)

    batcher: DynamicBatcher[Item, Result] = DynamicBatcher(slow, max_batch=2, max_wait_ms=60_000)
    try:
        futures = [batcher.submit((0, n)) for n in range(2)]
        assert running.wait(WAIT_S)  # the first batch is running: the rest stays queued
        futures += [batcher.submit((0, n)) for n in range(2, 7)]
        closer = threading.Thread(target=batcher.close)
        closer.start()
    finally:
        gate.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert all(future.done() for future in futures)  # done when close() returned, not later
    assert [f.result(0) for f in futures] == [(0, n, 2 * n) for n in range(7)]


def test_submit_after_close_is_refused_and_close_is_idempotent() -> None:
    batcher: DynamicBatcher[Item, Result] = DynamicBatcher(doubled, max_batch=4, max_wait_ms=1)
    assert batcher.submit((0, 1)).result(WAIT_S) == (0, 1, 2)
    batcher.close()
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit((0, 2))


def test_a_full_queue_blocks_submitters_until_the_model_catches_up() -> None:
    gate = threading.Event()
    running = threading.Event()

    def blocked(items: list[Item]) -> list[Result]:
        running.set()
        assert gate.wait(WAIT_S)
        return doubled(items)

    batcher: DynamicBatcher[Item, Result] = DynamicBatcher(
        blocked, max_batch=1, max_wait_ms=0, max_queue=2
    )
    late: list[Future[Result]] = []
    try:
        first = batcher.submit((0, 0))
        assert running.wait(WAIT_S)  # the batcher holds item 0 and takes nothing more
        queued = [batcher.submit((0, 1)), batcher.submit((0, 2))]  # fills the queue
        submitter = threading.Thread(target=lambda: late.append(batcher.submit((0, 3))))
        submitter.start()
        submitter.join(0.2)
        assert submitter.is_alive(), "a submit into a full queue returned instead of blocking"
        assert late == []
    finally:
        gate.set()
    submitter.join(WAIT_S)
    assert not submitter.is_alive()
    assert [f.result(WAIT_S) for f in [first, *queued, *late]] == [(0, n, 2 * n) for n in range(4)]
    batcher.close()


def test_a_cancelled_item_is_not_run_and_the_batcher_keeps_working() -> None:
    gate = threading.Event()
    running = threading.Event()
    recorder = Recorder()

    def blocked(items: list[Item]) -> list[Result]:
        running.set()
        assert gate.wait(WAIT_S)
        return recorder(items)

    with DynamicBatcher(blocked, max_batch=1, max_wait_ms=0) as batcher:
        try:
            first = batcher.submit((0, 0))
            assert running.wait(WAIT_S)
            abandoned = batcher.submit((0, 1))
            assert abandoned.cancel()  # still queued: the caller gave up on it
        finally:
            gate.set()
        assert first.result(WAIT_S) == (0, 0, 0)
        assert batcher.submit((0, 2)).result(WAIT_S) == (0, 2, 4)
    assert recorder.batches == [[(0, 0)], [(0, 2)]]


def test_a_failing_on_batch_hook_does_not_stop_the_batcher() -> None:
    def broken_hook(event: BatchEvent) -> None:
        raise RuntimeError("metrics backend down")

    with DynamicBatcher(doubled, max_batch=1, max_wait_ms=0, on_batch=broken_hook) as batcher:
        assert batcher.submit((0, 1)).result(WAIT_S) == (0, 1, 2)
        assert batcher.submit((0, 2)).result(WAIT_S) == (0, 2, 4)


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(doubled, max_batch=0, max_wait_ms=1)


def test_urgent_items_go_ahead_of_every_queued_bulk_item() -> None:
    release = threading.Event()
    order: list[list[Item]] = []

    def run(items: list[Item]) -> list[Result]:
        release.wait(WAIT_S)  # the first batch holds the runner while the lanes fill
        order.append(list(items))
        return doubled(items)

    with DynamicBatcher(run, max_batch=4, max_wait_ms=0) as batcher:
        first = batcher.submit((0, 0))
        deadline = time.monotonic() + WAIT_S
        while batcher.queued and time.monotonic() < deadline:
            time.sleep(0.001)  # the runner took the first item and is blocked in run
        bulk = [batcher.submit((1, n)) for n in range(8)]
        urgent = batcher.submit((2, 0), urgent=True)
        release.set()
        for future in [first, *bulk, urgent]:
            future.result(WAIT_S)
    assert order[1][0] == (2, 0), "the urgent item leads the next batch"
    assert order[1][1:] == [(1, 0), (1, 1), (1, 2)], "bulk items fill the rest in order"


def test_a_full_bulk_lane_never_blocks_an_urgent_item() -> None:
    release = threading.Event()

    def run(items: list[Item]) -> list[Result]:
        release.wait(WAIT_S)
        return doubled(items)

    with DynamicBatcher(run, max_batch=1, max_wait_ms=0, max_queue=2) as batcher:
        held = [batcher.submit((1, n)) for n in range(3)]  # one running, two fill the lane
        urgent = batcher.submit((2, 0), urgent=True)  # would block here if it shared the lane
        release.set()
        assert urgent.result(WAIT_S) == (2, 0, 0)
        for future in held:
            future.result(WAIT_S)


def test_several_runners_run_batches_at_once() -> None:
    both_running = threading.Barrier(2, timeout=WAIT_S)

    def run(items: list[Item]) -> list[Result]:
        both_running.wait()  # only passes when two batches run at the same time
        return doubled(items)

    with DynamicBatcher(run, max_batch=1, max_wait_ms=0, runners=2) as batcher:
        futures = [batcher.submit((0, n)) for n in range(2)]
        assert [f.result(WAIT_S) for f in futures] == [(0, 0, 0), (0, 1, 2)]


def test_an_urgent_runner_serves_urgent_items_while_the_others_are_busy() -> None:
    release = threading.Event()

    def run(items: list[Item]) -> list[Result]:
        if items[0][0] == 1:
            release.wait(WAIT_S)  # a long bulk batch holds the only ordinary runner
        return doubled(items)

    with DynamicBatcher(run, max_batch=4, max_wait_ms=0, runners=1, urgent_runners=1) as batcher:
        bulk = [batcher.submit((1, n)) for n in range(8)]
        deadline = time.monotonic() + WAIT_S
        while batcher.queued > 4 and time.monotonic() < deadline:
            time.sleep(0.001)  # the ordinary runner has taken its batch and is held in run
        urgent = batcher.submit((2, 5), urgent=True)
        try:
            assert urgent.result(WAIT_S) == (2, 5, 10)
            assert not any(f.done() for f in bulk), "the bulk batch should still be held"
        finally:
            release.set()
        for future in bulk:
            future.result(WAIT_S)


def test_closing_with_discard_drops_queued_items_instead_of_running_them() -> None:
    release = threading.Event()
    ran: list[int] = []

    def slow(items: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        release.wait(WAIT_S)
        ran.extend(n for _, n in items)
        return [(o, n, 2 * n) for o, n in items]

    batcher = DynamicBatcher(slow, max_batch=1, max_wait_ms=0)
    running = batcher.submit((0, 0))
    wait_until(lambda: batcher.queued == 0, WAIT_S, "the first item to start")
    queued = [batcher.submit((0, n)) for n in range(1, 20)]
    closer = threading.Thread(target=lambda: batcher.close(discard_queued=True))
    closer.start()
    release.set()
    closer.join(WAIT_S)
    assert running.result(WAIT_S) == (0, 0, 0)  # the batch under way finishes
    assert all(f.cancelled() for f in queued)
    assert ran == [0]
