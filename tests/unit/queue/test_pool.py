"""LanePool: bulk-queue tasks run on their own threads, so interactive ones never wait for them."""

from __future__ import annotations

import threading
from typing import Any

from worker.queue.pool import LanePool, delivered_from
from worker.queue.topology import QueueNames
from worker.settings import get_settings

WAIT_S = 10.0
NAMES = QueueNames.from_settings(get_settings())


def request_args(queue: str) -> tuple[Any, ...]:
    """What Celery's request passes its pool: (type, id, request dict, body, ...)."""
    return ("task", "id", {"delivery_info": {"routing_key": queue}}, b"", "json", "utf-8")


def test_the_routing_key_comes_from_the_request_dict() -> None:
    assert delivered_from(request_args(NAMES.bulk)) == NAMES.bulk
    assert delivered_from(("task", "id", {}, b"")) is None
    assert delivered_from(None) is None


def done(_: object) -> None:
    """Celery's success callback (the pool calls it with the task's return value)."""


def test_a_busy_bulk_lane_leaves_the_interactive_threads_free() -> None:
    pool = LanePool(limit=2)
    release = threading.Event()
    running: list[str] = []
    lock = threading.Lock()

    def task(name: str) -> Any:
        def run(*_: Any, **__: Any) -> None:
            with lock:
                running.append(name)
            if name.startswith("bulk"):
                release.wait(WAIT_S)

        return run

    try:
        bulk = [
            pool.on_apply(task(f"bulk-{i}"), args=request_args(NAMES.bulk), callback=done)
            for i in range(6)
        ]
        interactive = [
            pool.on_apply(task(f"one-{i}"), args=request_args(NAMES.classify), callback=done)
            for i in range(4)
        ]
        callback = pool.on_apply(
            task("callback"), args=request_args(NAMES.callbacks), callback=done
        )
        for result in [*interactive, callback]:
            result.get(timeout=WAIT_S)  # done while every bulk thread is still blocked
        with lock:
            started_bulk = [name for name in running if name.startswith("bulk")]
        assert len(started_bulk) == get_settings().bulk_concurrency
        release.set()
        for result in bulk:
            result.get(timeout=WAIT_S)
    finally:
        release.set()
        pool.on_stop()
