"""InteractiveFirst: bulk stages wait while interactive work runs, never longer than the cap."""

from __future__ import annotations

import threading
import time

from worker.classify.priority import InteractiveFirst

WAIT_S = 10.0


def test_bulk_goes_on_at_once_when_nothing_interactive_runs() -> None:
    gate = InteractiveFirst()
    started = time.monotonic()
    gate.yield_to_interactive(max_pause_s=WAIT_S)
    assert time.monotonic() - started < WAIT_S / 2


def test_bulk_waits_until_the_interactive_work_ends() -> None:
    gate = InteractiveFirst()
    resumed = threading.Event()
    with gate.interactive():
        waiter = threading.Thread(
            target=lambda: (gate.yield_to_interactive(max_pause_s=WAIT_S), resumed.set())
        )
        waiter.start()
        assert not resumed.wait(0.2), "bulk went on while interactive work ran"
    assert resumed.wait(WAIT_S)
    waiter.join(WAIT_S)
    assert gate.active == 0


def test_a_bulk_stage_never_waits_longer_than_its_cap() -> None:
    gate = InteractiveFirst()
    with gate.interactive():
        started = time.monotonic()
        gate.yield_to_interactive(max_pause_s=0.05)
        assert time.monotonic() - started >= 0.05


def test_only_interactive_priorities_take_the_interactive_lane() -> None:
    gate = InteractiveFirst()
    with gate.lane("bulk"):
        assert gate.active == 0
    with gate.lane("interactive"), gate.lane("interactive"):
        assert gate.active == 2
    assert gate.active == 0
