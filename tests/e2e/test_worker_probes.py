"""Health, readiness and metrics of real worker processes, on RabbitMQ and on SQS (moto).

What each probe says is checked against what really happens to the worker:
ready once the model is warm and the broker, S3 and the registry answer; not
ready while S3 is unreachable, while RabbitMQ is down or the SQS endpoint went
away (yet still live: restarting would not bring the broker back) and ready again
when RabbitMQ returns, and from SIGTERM on while the worker finishes what it holds.
The container's health-check command (``python -m worker.health``) is run against
the same process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from contracts import ClassifyJob
from tests.e2e.checks import wait_for_callback
from tests.e2e.conftest import (
    REPO,
    Dataset,
    WorkerProcess,
    executable,
    start_worker,
    worker_environment,
    worker_settings,
)
from tests.support.brokers import (
    RABBITMQ_URL,
    delete_amqp_topology,
    free_port,
    moto_sqs,
    require_rabbitmq,
    unique_prefix,
)
from tests.support.callbacks import CallbackReceiver
from tests.support.ops import get_probe, matching, metric_samples, slow_receiver
from tests.support.rabbitmq_node import PrivateRabbitMQ
from tests.support.waiting import wait_until
from worker.queue.producer import producer_app, submit_job
from worker.queue.topology import setup_sqs_queues
from worker.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

READY_TIMEOUT_S = 120


def wait_ready(worker: WorkerProcess) -> dict[str, object]:
    port = worker.settings.metrics_port

    def ready() -> dict[str, object] | None:
        status, body = get_probe(port, "/readyz")
        return body if status == 200 else None

    return wait_until(
        ready,
        READY_TIMEOUT_S,
        "/readyz to answer 200",
        interval_s=0.5,
        detail=lambda: f"{get_probe(port, '/readyz')}\n{worker.log_tail()}",
    )


def worker_command(settings: Settings) -> list[str]:
    """``synthdetect worker`` under a node name of its own (several run at once here)."""
    return [executable("synthdetect"), "worker", f"--hostname={settings.queue_prefix}@%h"]


def health_command(worker: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, with the worker's environment."""
    return subprocess.run(
        [sys.executable, "-m", "worker.health", *args],
        cwd=REPO,
        env=worker_environment(worker.settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def amqp_worker(
    e2e_s3: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    require_rabbitmq()
    settings = worker_settings(e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("ops"))
    log_path = tmp_path_factory.mktemp("ops-worker") / "worker.log"
    process = start_worker(worker_command(settings), settings, log_path)
    yield process
    process.stop()
    delete_amqp_topology(settings)


@pytest.fixture(scope="module")
def app(amqp_worker: WorkerProcess) -> Celery:
    return producer_app(amqp_worker.settings)


def test_ready_once_the_model_is_warm_and_every_dependency_answers(
    amqp_worker: WorkerProcess,
) -> None:
    body = wait_ready(amqp_worker)
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert set(checks) == {"shutdown", "model", "broker", "s3", "registry"}
    assert all(check["ok"] for check in checks.values())
    assert checks["model"]["detail"].startswith("default@")
    assert "loaded and warmed up" in checks["model"]["detail"]
    status, live = get_probe(amqp_worker.settings.metrics_port, "/livez")
    assert status == 200, live
    assert set(live["checks"]) == {"consumer", "batcher", "prober"}
    assert "event loop ran" in live["checks"]["consumer"]["detail"]
    assert live["checks"]["batcher"]["detail"] == "running"
    samples = metric_samples(amqp_worker.settings.metrics_port)
    wait_until(
        lambda: (
            matching(
                metric_samples(amqp_worker.settings.metrics_port),
                "synthdetect_ready",
                role="classify",
            )
            == 1.0
        ),
        30,
        "synthdetect_ready to become 1",
    )
    assert matching(samples, "synthdetect_model_serving_info", model="default") == 1.0


def test_the_container_health_check_command_follows_readiness(amqp_worker: WorkerProcess) -> None:
    wait_ready(amqp_worker)
    ready = health_command(amqp_worker)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert '"status": "ok"' in ready.stdout
    live = health_command(amqp_worker, "--live")
    assert live.returncode == 0, live.stdout + live.stderr
    closed = amqp_worker.settings.model_copy(update={"metrics_port": free_port()})
    nobody = health_command(WorkerProcess(closed, amqp_worker.process, amqp_worker.log_path, ""))
    assert nobody.returncode == 1
    assert "no answer on port" in nobody.stdout


def test_a_job_moves_every_operator_metric(
    amqp_worker: WorkerProcess, app: Celery, dataset: Dataset, receiver: CallbackReceiver
) -> None:
    port = amqp_worker.settings.metrics_port
    wait_ready(amqp_worker)
    before = metric_samples(port)
    uris = [*sorted(dataset.images)[:30], f"s3://{dataset.bucket}/cifake/missing.jpg"]
    job = ClassifyJob.model_validate(
        {
            "job_id": f"ops-metrics-{uuid.uuid4().hex[:8]}",
            "inputs": {"kind": "uris", "uris": uris},
            "output": {"uri": f"s3://{dataset.bucket}/results/ops"},
            "priority": "bulk",
            "callback": {"url": receiver.plan("/ops-metrics")},
        }
    )
    submit_job(job, amqp_worker.settings, app)
    wait_for_callback(receiver, job.job_id, timeout_s=120)
    wait_until(
        lambda: (
            matching(metric_samples(port), "synthdetect_callback_attempts_total")
            > matching(before, "synthdetect_callback_attempts_total")
        ),
        30,
        "the callback attempt to be counted",
    )
    after = metric_samples(port)

    def grew(name: str, **labels: str) -> float:
        return matching(after, name, **labels) - matching(before, name, **labels)

    for stage in ("fetch", "decode", "inference", "write", "callback"):
        assert grew("synthdetect_stage_seconds_count", stage=stage) >= 1, stage
    assert grew("synthdetect_stage_seconds_count", stage="fetch") == 31
    assert grew("synthdetect_queue_wait_seconds_count", queue="bulk") >= 1
    assert grew("synthdetect_shard_seconds_count", priority="bulk") == 1
    assert grew("synthdetect_images_total", model="default") == 30
    assert grew("synthdetect_image_errors_total", code="not_found") == 1
    assert grew("synthdetect_jobs_total", status="partial", priority="bulk") == 1
    assert grew("synthdetect_callback_attempts_total", outcome="delivered") == 1


def test_readiness_fails_from_sigterm_on_while_the_worker_finishes_its_work(
    e2e_s3: Settings, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_rabbitmq()
    settings = worker_settings(e2e_s3, broker_url=RABBITMQ_URL, queue_prefix=unique_prefix("term"))
    log_path = tmp_path_factory.mktemp("term-worker") / "worker.log"
    worker = start_worker(worker_command(settings), settings, log_path)
    port = settings.metrics_port
    try:
        wait_ready(worker)
        with slow_receiver(hold_s=8.0) as url:
            job = ClassifyJob.model_validate(
                {
                    "job_id": f"ops-term-{uuid.uuid4().hex[:8]}",
                    "inputs": {"kind": "uris", "uris": sorted(dataset.images)[:2]},
                    "output": {"uri": f"s3://{dataset.bucket}/results/term"},
                    "callback": {"url": url},
                }
            )
            submit_job(job, settings, producer_app(settings))
            # The callback attempt now holds a task for 8 s: the worker cannot exit before.
            wait_until(
                lambda: (
                    matching(metric_samples(port), "synthdetect_stage_seconds_count", stage="write")
                    >= 1
                ),
                60,
                "the job's shard to be written",
            )
            os.killpg(worker.process.pid, signal.SIGTERM)
            status, body = wait_until(
                lambda: (lambda s_b: s_b if s_b[0] != 200 else None)(get_probe(port, "/readyz")),
                10,
                "/readyz to stop answering 200 after SIGTERM",
                interval_s=0.05,
            )
            assert status == 503, body
            assert body["failing"] == ["shutdown"]
            assert body["checks"]["shutdown"]["detail"].startswith("shutting down")
            assert get_probe(port, "/livez")[0] == 200
            worker.process.wait(60)
    finally:
        worker.stop()
        delete_amqp_topology(settings)


def test_not_ready_while_s3_is_unreachable_yet_live(
    e2e_s3: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_rabbitmq()
    unreachable = f"http://127.0.0.1:{free_port()}"
    settings = worker_settings(
        e2e_s3,
        broker_url=RABBITMQ_URL,
        queue_prefix=unique_prefix("nos3"),
        s3_endpoint_url=unreachable,
        model_registry="s3://no-such-registry/models",
    )
    log_path = tmp_path_factory.mktemp("nos3-worker") / "worker.log"
    worker = start_worker(worker_command(settings), settings, log_path)
    port = settings.metrics_port
    try:

        def probed() -> tuple[int, dict[str, object]] | None:
            status, body = get_probe(port, "/readyz")
            checks = body.get("checks", {})
            assert isinstance(checks, dict)
            return (status, body) if "not probed yet" not in str(checks.get("s3")) else None

        status, body = wait_until(probed, 60, "the first S3 probe", interval_s=0.5)
        assert status == 503
        assert "s3" in body["failing"]  # type: ignore[operator]
        assert "registry" in body["failing"]  # type: ignore[operator]
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert "unreachable" in checks["s3"]["detail"]
        assert checks["broker"]["ok"] is True
        assert get_probe(port, "/livez")[0] == 200
        assert health_command(worker).returncode == 1
    finally:
        worker.stop()
        delete_amqp_topology(settings)


def test_sqs_worker_is_ready_then_not_ready_but_live_when_sqs_goes_away(
    e2e_s3: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with moto_sqs() as endpoint:
        settings = worker_settings(
            e2e_s3,
            broker_url="sqs://",
            sqs_endpoint_url=endpoint,
            queue_prefix=unique_prefix("opsqs"),
            sqs_visibility_timeout_s=120,
        )
        setup_sqs_queues(settings)
        log_path = tmp_path_factory.mktemp("opsqs-worker") / "worker.log"
        command = [executable("celery"), "-A", "worker.queue.app", "worker", "--loglevel=INFO"]
        worker = start_worker(command, settings, log_path)
        try:
            body = wait_ready(worker)
            checks = body["checks"]
            assert isinstance(checks, dict)
            assert checks["broker"]["detail"].startswith("SQS answers for")
            assert get_probe(settings.metrics_port, "/livez")[0] == 200
        except BaseException:
            worker.stop()
            raise
    # moto has stopped: SQS no longer answers.
    try:
        port = settings.metrics_port

        def not_ready() -> dict[str, object] | None:
            status, body = get_probe(port, "/readyz")
            return body if status == 503 else None

        body = wait_until(not_ready, 60, "/readyz to fail without SQS", interval_s=0.5)
        assert "broker" in body["failing"]  # type: ignore[operator]
        status, live = get_probe(port, "/livez")
        assert status == 200, live
    finally:
        worker.stop()


def test_a_broker_outage_fails_readiness_not_liveness_and_readiness_returns_with_it(
    e2e_s3: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    broker = PrivateRabbitMQ()
    worker = None
    try:
        broker.start()
        settings = worker_settings(e2e_s3, broker_url=broker.url, queue_prefix=unique_prefix("out"))
        log_path = tmp_path_factory.mktemp("outage-worker") / "worker.log"
        worker = start_worker(worker_command(settings), settings, log_path)
        port = settings.metrics_port
        wait_ready(worker)
        broker.stop()

        def broker_failing() -> dict[str, object] | None:
            status, body = get_probe(port, "/readyz")
            return body if status == 503 and "broker" in body["failing"] else None

        body = wait_until(broker_failing, 60, "/readyz to report the broker", interval_s=0.5)
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert checks["broker"]["detail"] == "not connected to the broker"
        status, live = get_probe(port, "/livez")
        assert status == 200, live
        assert live["checks"]["consumer"]["detail"].startswith("not connected")

        broker.start()
        wait_ready(worker)
        assert get_probe(port, "/livez")[0] == 200
    finally:
        if worker is not None:
            worker.stop()
        broker.remove()
