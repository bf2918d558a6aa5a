"""The commands deploy/ runs, run for real outside containers (no container engine here).

Read from the files themselves, not restated: the CPU image's ENTRYPOINT + CMD
(``synthdetect worker``), its ENV and HEALTHCHECK command, the compose services'
commands and environment, the example producer's entry point, the Kubernetes probes'
paths. Host names of the compose network are mapped to this machine's RabbitMQ and
the test's SeaweedFS; the queue prefix, ports and buckets are made unique; each
worker gets a node name of its own (``--hostname``, appended) because two run at
once. What is still only validated, not run: the image builds themselves, the compose
file under Docker, the manifests in a cluster (tests/unit/test_deploy.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts import JobSummary
from scripts.dev_s3 import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, SeaweedServer
from tests.support.brokers import RABBITMQ_URL, delete_amqp_topology, free_port, require_rabbitmq
from tests.support.ops import get_probe
from tests.support.waiting import wait_until
from worker.classify.results import JobLayout, read_summary
from worker.settings import Settings
from worker.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def image_contract(dockerfile: Path) -> dict[str, Any]:
    """ENTRYPOINT, CMD, HEALTHCHECK command and ENV of the image's last stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found: dict[str, Any] = {"ENV": {}}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            found["ENV"] = {}
        elif word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                found["ENV"][name] = value
        elif word in ("ENTRYPOINT", "CMD"):
            found[word] = json.loads(rest)
        elif word == "HEALTHCHECK":
            found[word] = json.loads(rest.split("CMD", 1)[1])
    return found


IMAGE = image_contract(DEPLOY / "docker" / "Dockerfile")
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def local(command: list[str]) -> list[str]:
    """An image command with its programs taken from this virtualenv (the image's PATH)."""
    program = BIN / command[0]
    return [str(program) if program.exists() else command[0], *command[1:]]


@pytest.fixture(scope="module")
def stack(seaweed: SeaweedServer, aws_env: None) -> Iterator[dict[str, str]]:
    """The compose services' environment, mapped onto this machine (one prefix, one bucket)."""
    require_rabbitmq()
    prefix = f"t-deploy-{uuid.uuid4().hex[:8]}"
    bucket = f"deploy-{uuid.uuid4().hex[:10]}"
    compose_env = COMPOSE["services"]["classify-worker"]["environment"]
    env = dict(os.environ)
    env.update({k: v for k, v in IMAGE["ENV"].items() if k not in ("PATH", "HOME")})
    env.update({k: str(v) for k, v in compose_env.items()})
    env.update(
        {
            # The compose network's rabbitmq:5672 and s3:8333, here.
            "SYNTHDETECT_BROKER_URL": RABBITMQ_URL,
            "SYNTHDETECT_S3_ENDPOINT_URL": seaweed.endpoint_url,
            "SYNTHDETECT_MODEL_REGISTRY": compose_env["SYNTHDETECT_MODEL_REGISTRY"].replace(
                "synthdetect-models", f"{bucket}-models"
            ),
            "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
            "SYNTHDETECT_QUEUE_PREFIX": prefix,
            "SYNTHDETECT_METRICS_PORT": str(free_port()),
            "SYNTHDETECT_WEBHOOK_SECRET": "",
        }
    )
    env = {k: v for k, v in env.items() if v != ""}
    env["BUCKET"] = bucket
    yield env
    delete_amqp_topology(Settings(broker_url=RABBITMQ_URL, queue_prefix=prefix))


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def health_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, as Docker runs it inside the container."""
    return subprocess.run(
        local(IMAGE["HEALTHCHECK"]), cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def wait_healthy(process: subprocess.Popen[bytes], env: dict[str, str], log: Path) -> None:
    def healthy() -> bool:
        assert process.poll() is None, f"worker exited:\n{log.read_text()[-3000:]}"
        return health_check(env).returncode == 0

    wait_until(
        healthy,
        180,
        "the image's health check to pass",
        interval_s=2.0,
        detail=lambda: log.read_text()[-3000:],
    )


def stop_within_grace(process: subprocess.Popen[bytes], env: dict[str, str]) -> float:
    """SIGTERM as Docker and Kubernetes send it; seconds until the process exited."""
    began = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    limit = float(env["SYNTHDETECT_SHUTDOWN_GRACE_S"]) + 15
    try:
        process.wait(limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the worker outlived the stop grace period ({limit:.0f} s)")
    return time.monotonic() - began


def test_the_compose_stack_commands_classify_the_sample_end_to_end(
    stack: dict[str, str], tmp_path: Path
) -> None:
    services = COMPOSE["services"]
    env = dict(stack)
    worker_command = local(IMAGE["ENTRYPOINT"] + services["classify-worker"]["command"])
    assert worker_command[1:] == ["worker"]
    node = f"--hostname={env['SYNTHDETECT_QUEUE_PREFIX']}@%h"
    classify = start([*worker_command, node], env, tmp_path / "classify.log")
    try:
        wait_healthy(classify, env, tmp_path / "classify.log")
        # The Kubernetes probes: the paths and port the rendered Deployments name.
        port = int(env["SYNTHDETECT_METRICS_PORT"])
        for path in ("/livez", "/readyz"):
            assert get_probe(port, path)[0] == 200, path
        with urllib.request.urlopen(f"{env['SYNTHDETECT_S3_ENDPOINT_URL']}/healthz") as answer:
            assert answer.status == 200  # what the compose s3 service's health check asks

        producer = services["example-producer"]
        mounts = {"/examples": DEPLOY / "examples", "/sample": REPO / "tests/data/cifake-sample"}
        command = [*producer["entrypoint"], *producer["command"]]
        for inside, here in mounts.items():
            command = [
                str(here) + arg[len(inside) :]
                if arg == inside or arg.startswith(inside + "/")
                else arg
                for arg in command
            ]
        command = [env["BUCKET"] if arg == "synthdetect-example" else arg for arg in command]
        done = subprocess.run(
            local(command), cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stdout + done.stderr
        summary = JobSummary.model_validate_json(done.stdout)
        assert summary.status == "succeeded"
        assert summary.counts.total == 400
        settings = Settings(s3_endpoint_url=env["SYNTHDETECT_S3_ENDPOINT_URL"])
        results = f"s3://{env['BUCKET']}/results"
        stored = read_summary(
            Storage.from_settings(settings), JobLayout.of(results, summary.job_id)
        )
        assert stored == summary  # the results are in the bucket

        retrain_args = services["retrain-worker"]["command"]
        retrain_args = [
            a.replace("synthdetect-retrain", f"{env['SYNTHDETECT_QUEUE_PREFIX']}-retrain")
            for a in retrain_args
        ]
        retrain_env = {**env, "SYNTHDETECT_METRICS_PORT": str(free_port())}
        retrain = start(
            [*local(IMAGE["ENTRYPOINT"]), *retrain_args, f"--hostname=retrain-{node[11:]}"],
            retrain_env,
            tmp_path / "retrain.log",
        )
        try:
            wait_healthy(retrain, retrain_env, tmp_path / "retrain.log")
            status, body = get_probe(int(retrain_env["SYNTHDETECT_METRICS_PORT"]), "/readyz")
            assert status == 200
            assert body["checks"]["model"]["detail"].startswith("retrain worker")
        finally:
            stop_within_grace(retrain, retrain_env)
    finally:
        if classify.poll() is None:
            stop_within_grace(classify, env)
    assert health_check(env).returncode == 1  # nothing answers once the worker is gone
