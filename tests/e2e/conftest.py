"""End-to-end fixtures: worker subprocesses, SeaweedFS, RabbitMQ or moto SQS, a webhook receiver.

The 500-image data set is uploaded once per session: the 400 CIFAKE sample
images plus 100 more cut from ``shared/data/cifake/dev-test.tar`` (or, where
that file is absent, the first 100 sample images again under new keys). The
labels the embedded mode gives the same bytes are computed once, in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts import ClassifyJob, ModelRef
from scripts.dev_s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY, SeaweedServer
from tests.e2e.checks import outcome
from tests.support.brokers import free_port
from tests.support.callbacks import CallbackReceiver, running_receiver
from worker.classify.inputs import InputItem
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.imaging import ImageLimits
from worker.inference.engine import InferenceEngine
from worker.queue.producer import submit_job
from worker.settings import Settings
from worker.storage import S3Store, Storage

REPO = Path(__file__).parents[2]
SAMPLE = REPO / "tests" / "data" / "cifake-sample"
DEV_TEST_TARS = [
    Path("/work/shared/data/cifake/dev-test.tar"),
    REPO.parent / "shared" / "data" / "cifake" / "dev-test.tar",
]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WORKER_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Dataset:
    """The uploaded images: bucket, the prefix holding them, and bytes by URI."""

    bucket: str
    prefix: str
    images: dict[str, bytes]
    labels: dict[str, str]
    """The embedded mode's label (or ``abstained``) of every URI."""


def _extra_images(count: int) -> list[tuple[str, bytes]]:
    for tar_path in DEV_TEST_TARS:
        if tar_path.is_file():
            found = []
            with tarfile.open(tar_path) as archive:
                for member in archive:
                    if member.isreg():
                        data = archive.extractfile(member).read()  # type: ignore[union-attr]
                        found.append((f"devtest/{member.name.lower()}", data))
                        if len(found) == count:
                            return found
    samples = sorted(SAMPLE.glob("*/*.jpg"))[:count]
    return [(f"copies/{p.parent.name}/{p.name}", p.read_bytes()) for p in samples]


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Credentials for SeaweedFS (any) and moto (any), through the standard AWS chain."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", DEV_ACCESS_KEY_ID)
        patch.setenv("AWS_SECRET_ACCESS_KEY", DEV_SECRET_ACCESS_KEY)
        patch.setenv("AWS_DEFAULT_REGION", DEV_REGION)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture(scope="session")
def e2e_s3(seaweed: SeaweedServer, aws_env: None) -> Settings:
    return Settings(s3_endpoint_url=seaweed.endpoint_url, s3_region=DEV_REGION, device="cpu")


@pytest.fixture(scope="session")
def dataset(e2e_s3: Settings) -> Dataset:
    client = S3Store.from_settings(e2e_s3).client
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    files = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(SAMPLE.glob("*/*.jpg"))]
    files += _extra_images(100)
    assert len(files) == 500
    images = {f"s3://{bucket}/cifake/{key}": data for key, data in files}

    def put(item: tuple[str, bytes]) -> None:
        uri, data = item
        client.put_object(Bucket=bucket, Key=uri.split("/", 3)[3], Body=data)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, images.items()))
    return Dataset(bucket, f"s3://{bucket}/cifake/", images, embedded_labels(images))


def embedded_labels(images: dict[str, bytes]) -> dict[str, str]:
    """What ``classify_items`` (the embedded mode's pipeline) says about the same bytes: a
    label, or ``abstained`` where the default model's domain check abstains."""
    settings = Settings(device="cpu")
    engine = InferenceEngine.from_settings(settings, Storage.from_settings(settings))
    try:
        items = [InputItem(uri, lambda data=data: data) for uri, data in images.items()]
        results = classify_items(
            items,
            engine,
            ModelRef(),
            ImageLimits.from_settings(settings),
            PipelineConfig.from_settings(settings),
        )
        return {r.uri: found for r in results if (found := outcome(r)) is not None}
    finally:
        engine.close()


@pytest.fixture(scope="session")
def receiver() -> Iterator[CallbackReceiver]:
    with running_receiver(SECRET) as receiver:
        yield receiver


@dataclass
class WorkerProcess:
    """A running worker subprocess and the settings it was started with."""

    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def events(self, event: str, **fields: object) -> list[dict[str, object]]:
        """The JSON log lines of ``event`` whose fields include ``fields``, in log order."""
        # Complete lines only: the worker may be half-way through writing the last one.
        *lines, _unfinished = self.log_path.read_text(errors="replace").split("\n")
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        return [
            e
            for e in parsed
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def worker_environment(settings: Settings) -> dict[str, str]:
    """The worker's environment: everything it needs comes from SYNTHDETECT_* and AWS_*."""
    env = dict(os.environ)
    values = {
        "BROKER_URL": settings.broker_url,
        "QUEUE_PREFIX": settings.queue_prefix,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "SQS_ENDPOINT_URL": settings.sqs_endpoint_url or "",
        "SHARD_SIZE": str(settings.shard_size),
        "MAX_WAIT_MS": str(settings.max_wait_ms),
        "METRICS_PORT": str(settings.metrics_port),
        "WEBHOOK_SECRET": SECRET,
        "CALLBACK_ALLOWLIST": '["127.0.0.1"]',
        "CALLBACK_BACKOFF_BASE_S": str(settings.callback_backoff_base_s),
        "MODEL_REGISTRY": settings.model_registry,
        "ALIAS_POLL_S": str(settings.alias_poll_s),
        "DEVICE": "cpu",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    env.update({f"SYNTHDETECT_{k}": v for k, v in values.items() if v})
    return env


def unique_node_name(command: list[str], settings: Settings) -> list[str]:
    """``command`` with a ``--hostname`` no other worker uses, unless it names one.

    The shared RabbitMQ refuses a second consumer of a node's pidbox queue
    (``RESOURCE_LOCKED``), so two workers with Celery's default name (``celery@<host>``)
    on one broker, from two test runs, fail to start.
    """
    if not any(arg.startswith(("--hostname", "-n")) for arg in command[1:]):
        return [*command, f"--hostname={settings.queue_prefix}-{uuid.uuid4().hex[:6]}@%h"]
    return command


def start_worker(
    command: list[str],
    settings: Settings,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
) -> WorkerProcess:
    """Start ``command`` (with a unique node name) and return once it logged ``worker_ready``.

    ``extra_env`` adds variables (``SYNTHDETECT_*`` settings the environment above leaves out).
    """
    command = unique_node_name(command, settings)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**worker_environment(settings), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(
        settings, process, log_path, f"http://127.0.0.1:{settings.metrics_port}/metrics"
    )
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while '"worker_ready"' not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            pytest.fail(f"worker did not start:\n{worker.log_tail()}")
        time.sleep(0.5)
    return worker


def worker_settings(e2e_s3: Settings, **overrides: object) -> Settings:
    return e2e_s3.model_copy(
        update={
            "shard_size": 100,
            "max_wait_ms": 50.0,
            "metrics_port": free_port(),
            "callback_backoff_base_s": 1.0,
            "callback_allowlist": ["127.0.0.1"],
            **overrides,
        }
    )


def executable(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def submit_bulk_prefix_job(
    settings: Settings, prefix: str, output: str, receiver: CallbackReceiver, name: str
) -> ClassifyJob:
    """Send a bulk job over ``prefix`` with a callback planned at ``/<name>``.

    The shape every fault test starts from: many shards (bulk), so a fault can land
    between them, and a callback, so "answered once" can be checked.
    """
    job = ClassifyJob.model_validate(
        {
            "job_id": f"{name}-{uuid.uuid4().hex[:8]}",
            "inputs": {"kind": "prefix", "prefix": prefix},
            "output": {"uri": output},
            "priority": "bulk",
            "callback": {"url": receiver.plan(f"/{name}")},
        }
    )
    submit_job(job, settings)
    return job
