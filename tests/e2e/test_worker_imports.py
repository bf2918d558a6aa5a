"""What a worker process loads at start-up: a classify worker never imports training code.

A real ``synthdetect worker`` starts against the machine's RabbitMQ; a Celery
``worker_ready`` hook (loaded before the command runs) writes ``sys.modules`` to
a file and stops the process. Training code, plotting and the HTML report cost
start-up time and memory and belong to retrain workers only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.brokers import delete_amqp_topology, require_rabbitmq, unique_prefix
from worker.architecture import CLASSIFY_WORKER_NEVER_IMPORTS
from worker.settings import Settings

pytestmark = pytest.mark.e2e

PROBE = textwrap.dedent(
    """
    import json, os, sys
    from celery import signals

    OUT = sys.argv[1]

    @signals.worker_ready.connect(weak=False)
    def _dump(**_):
        with open(OUT, "w") as out:
            json.dump(sorted(sys.modules), out)
        os._exit(0)

    from worker.cli.main import main
    sys.argv = ["synthdetect", "worker", *sys.argv[2:]]
    main()
    """
)


def modules_at_ready(tmp_path: Path, *worker_args: str) -> list[str]:
    require_rabbitmq()
    out = tmp_path / "modules.json"
    prefix = unique_prefix("imports")
    env = {**os.environ, "SYNTHDETECT_QUEUE_PREFIX": prefix, "SYNTHDETECT_METRICS_PORT": "0"}
    args = [arg.replace("PREFIX", prefix) for arg in worker_args]
    try:
        completed = subprocess.run(
            [sys.executable, "-c", PROBE, str(out), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        delete_amqp_topology(Settings(queue_prefix=prefix))
    assert out.exists(), f"worker never became ready: {completed.stderr[-2000:]}"
    return json.loads(out.read_text())


def loaded(modules: list[str], prefix: str) -> list[str]:
    return [m for m in modules if m == prefix or m.startswith(prefix + ".")]


def test_a_classify_worker_imports_no_training_code(tmp_path: Path) -> None:
    modules = modules_at_ready(tmp_path)
    assert "worker.queue.tasks" in modules
    for prefix in CLASSIFY_WORKER_NEVER_IMPORTS:
        assert not loaded(modules, prefix), f"a classify worker imported {loaded(modules, prefix)}"


def test_a_retrain_worker_registers_the_retrain_task(tmp_path: Path) -> None:
    modules = modules_at_ready(tmp_path, "-Q", "PREFIX-retrain")
    assert "worker.queue.retrain_tasks" in modules
    assert "worker.retrain.jobs" in modules
