"""Retrain jobs on RabbitMQ + SeaweedFS: a real retrain worker publishes, gates and reports.

A small data set from ``dev-train.tar`` (200 real + 200 synthetic images to
train on, 60 + 60 more held out) goes to SeaweedFS; the registry is
``s3://<bucket>/models``, so production starts as the bundled default model
(trained on 30,000 images). A 15-second model trained on 400 images must lose
the gate against it and stay a candidate; with a margin of 1.0 the next one is
promoted, and ``synthdetect models rollback`` moves production back.

400 training images, and both retrains hold out the separate 120: every training
run (CV folds of ~267 images, the final fit on 400) then has at least 5 steps per
epoch. The training loop's OneCycleLR schedule fails on exactly 4 steps, which a
pool of 240 or 320 images at the minimum of one epoch gives (reported upstream).

Two workers run: one started for the retrain queue alone, and one for the
callbacks queue (in production, the classify workers deliver callbacks).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts import ModelCard, ModelId, ModelRef, RetrainJob, RetrainSummary
from tests.e2e.checks import assert_delivered_once, wait_for_callback
from tests.e2e.conftest import (
    REPO,
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
    require_rabbitmq,
    unique_prefix,
)
from tests.support.callbacks import CallbackReceiver
from tests.support.waiting import wait_until
from worker.inference.registry import ModelRegistry
from worker.queue.producer import submit_retrain_job, wait_for_retrain_summary
from worker.queue.topology import QueueNames
from worker.retrain.jobs import RetrainLayout, jobs_root
from worker.settings import Settings
from worker.storage import S3Store, Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

DEV_TRAIN_TARS = [
    Path("/work/shared/data/cifake/dev-train.tar"),
    REPO.parent / "shared" / "data" / "cifake" / "dev-train.tar",
]
TRAIN_PER_LABEL = 200
HELD_PER_LABEL = 60
LABELS = {"REAL": "real", "FAKE": "synthetic"}
SUMMARY_TIMEOUT_S = 420
"""A 15 s budget runs longer on a busy 2-core machine (speed probes, report, production)."""


@dataclass(frozen=True)
class RetrainData:
    bucket: str
    registry: str
    train: str
    held: str
    tar: str


def dev_train_images() -> dict[str, list[tuple[str, bytes]]]:
    """The first 260 REAL and 260 FAKE members of dev-train.tar, by our label name."""
    path = next((p for p in DEV_TRAIN_TARS if p.is_file()), None)
    if path is None:
        pytest.skip("shared/data/cifake/dev-train.tar is not available")
    wanted = TRAIN_PER_LABEL + HELD_PER_LABEL
    found: dict[str, list[tuple[str, bytes]]] = {"real": [], "synthetic": []}
    with tarfile.open(path) as archive:
        for member in archive:
            label = LABELS.get(member.name.split("/")[0])
            if member.isreg() and label and len(found[label]) < wanted:
                data = archive.extractfile(member).read()  # type: ignore[union-attr]
                found[label].append((Path(member.name).name, data))
            if all(len(v) == wanted for v in found.values()):
                return found
    pytest.fail(f"{path} holds fewer than {wanted} images per label")


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data(e2e_s3: Settings) -> RetrainData:
    images = dev_train_images()
    client = S3Store.from_settings(e2e_s3).client
    bucket = f"e2e-retrain-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    objects: dict[str, bytes] = {}
    members = []
    for label, files in images.items():
        for i, (name, payload) in enumerate(files):
            split = "train" if i < TRAIN_PER_LABEL else "held"
            objects[f"retrain/{split}/{label}/{name}"] = payload
            if split == "train":
                members.append((f"{label}/{name}", payload))
    objects["retrain/train.tar"] = tar_bytes(members)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()
            )
        )
    base = f"s3://{bucket}/retrain"
    return RetrainData(
        bucket, f"s3://{bucket}/models", f"{base}/train/", f"{base}/held/", f"{base}/train.tar"
    )


@dataclass
class Workers:
    settings: Settings
    retrain: WorkerProcess


@pytest.fixture(scope="module")
def workers(
    e2e_s3: Settings, data: RetrainData, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    require_rabbitmq()
    settings = worker_settings(
        e2e_s3,
        broker_url=RABBITMQ_URL,
        queue_prefix=unique_prefix("retrain"),
        model_registry=data.registry,
    )
    names = QueueNames.from_settings(settings)
    logs = tmp_path_factory.mktemp("retrain-workers")
    worker = [executable("synthdetect"), "worker"]
    with ExitStack() as running:
        running.callback(delete_amqp_topology, settings)
        # Own node names: two workers on one host (and other test runs) must not share a pidbox.
        retrain = start_worker(
            [*worker, "-Q", names.retrain, f"--hostname={names.retrain}@%h"],
            settings,
            logs / "retrain.log",
        )
        running.callback(retrain.stop)
        callbacks = start_worker(
            [*worker, "-Q", names.callbacks, "-c", "2", f"--hostname={names.callbacks}@%h"],
            settings.model_copy(update={"metrics_port": free_port()}),
            logs / "callbacks.log",
        )
        running.callback(callbacks.stop)
        yield Workers(settings, retrain)


@pytest.fixture
def registry(workers: Workers) -> ModelRegistry:
    return ModelRegistry.from_settings(workers.settings, Storage.from_settings(workers.settings))


def retrain_job(job_id: str, **fields: object) -> RetrainJob:
    return RetrainJob.model_validate(
        {"job_id": job_id, "budget": {"seconds": 15}, "cv_folds": 3, **fields}
    )


def summary_of(job: RetrainJob, workers: Workers) -> RetrainSummary:
    storage = Storage.from_settings(workers.settings)
    deadline = time.monotonic() + SUMMARY_TIMEOUT_S
    while time.monotonic() < deadline:
        summary = wait_for_retrain_summary(job, workers.settings.model_registry, storage, 5.0)
        if summary is not None:
            return summary
        dead = log_events(workers.retrain, "message_dead_lettered", job.job_id)
        assert not dead, f"{job.job_id} was dead-lettered: {dead[0]['reason']}"
    pytest.fail(f"no summary for {job.job_id}:\n{workers.retrain.log_tail()}")


def log_events(worker: WorkerProcess, event: str, job_id: str) -> list[dict[str, object]]:
    return worker.events(event, job_id=job_id)


def synthdetect(workers: Workers, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable("synthdetect"), *args],
        cwd=REPO,
        env=worker_environment(workers.settings),
        capture_output=True,
        text=True,
        timeout=SUMMARY_TIMEOUT_S + 60,
        check=True,
    )


def test_a_worse_model_is_published_complete_but_kept_as_a_candidate(
    workers: Workers, data: RetrainData, registry: ModelRegistry, receiver: CallbackReceiver
) -> None:
    production = registry.resolve(ModelRef())
    expected = ModelId(name="default", version=registry.next_version("default"))
    job = retrain_job(
        f"worse-{uuid.uuid4().hex[:8]}",
        dataset={"kind": "prefix", "prefix": data.train},
        holdout={"prefix": data.held},
        seed=3,
        callback={"url": receiver.plan("/retrain-worse")},
    )
    submit_retrain_job(job, workers.settings)
    summary = summary_of(job, workers)

    assert summary.status == "succeeded", summary.error
    assert summary.model == expected
    assert not summary.promoted
    assert summary.decision.startswith("kept as a candidate, worse than production"), summary
    assert summary.heldout_accuracy is not None
    assert summary.production_accuracy is not None
    assert f"{summary.heldout_accuracy:.4f}" in summary.decision
    assert f"{summary.production_accuracy:.4f}" in summary.decision
    assert summary.production_accuracy > summary.heldout_accuracy
    assert registry.resolve(ModelRef()) == production  # the alias did not move

    card, model_bytes = registry.read_model(expected)
    assert card.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert_card_is_complete(card, seed=3)
    assert card.training is not None
    assert card.training.data.source == data.train
    assert card.metrics["heldout"].n == 2 * HELD_PER_LABEL
    assert summary.card_uri == f"{data.registry}/default/{expected.version}/card.json"
    assert summary.report_uri == f"{data.registry}/default/{expected.version}/report.html"
    storage = registry.storage
    assert storage.get_bytes(summary.report_uri).lstrip().lower().startswith(b"<!doctype html")

    delivery = wait_for_callback(receiver, job.job_id, timeout_s=120)
    assert_delivered_once(receiver, job.job_id)
    assert delivery.body == json.loads(summary.model_dump_json(exclude_none=True))
    progress = log_events(workers.retrain, "retrain_progress", job.job_id)
    messages = [str(e["message"]) for e in progress]
    assert messages[0].startswith(f"loaded {2 * TRAIN_PER_LABEL} images")
    assert any(m.startswith("published default@") for m in messages)


def assert_card_is_complete(card: ModelCard, seed: int) -> None:
    assert card.training is not None
    assert len(card.training.data.manifest_sha256) == 64
    assert card.training.data.counts == {"real": TRAIN_PER_LABEL, "synthetic": TRAIN_PER_LABEL}
    assert card.training.hyperparameters["winner"]
    assert card.training.hyperparameters["budget"]["seconds"] == 15
    assert card.training.seed == seed
    assert card.training.start
    assert set(card.metrics) >= {"heldout", "cv"}
    for metrics in (card.metrics["heldout"], card.metrics["cv"]):
        assert set(metrics.per_class_accuracy) == {"real", "synthetic"}
    assert card.metrics["cv"].accuracy_std is not None
    assert card.labels == ["real", "synthetic"]


def test_a_model_within_the_margin_is_promoted_and_rollback_restores_production(
    workers: Workers, data: RetrainData, registry: ModelRegistry
) -> None:
    before = registry.resolve(ModelRef())
    expected = registry.next_version("default")
    job_id = f"margin-{uuid.uuid4().hex[:8]}"
    sent = synthdetect(
        workers,
        "submit-retrain",
        "--dataset",
        data.tar,
        "--holdout",
        data.held,
        "--budget",
        "15s",
        "--folds",
        "3",
        "--margin",
        "1.0",
        "--job-id",
        job_id,
        "--wait",
        str(SUMMARY_TIMEOUT_S),
    ).stdout
    job_line, _, summary_text = sent.partition("\n")
    assert RetrainJob.model_validate_json(job_line).dataset.kind == "tar"
    summary = RetrainSummary.model_validate_json(summary_text)
    assert summary.status == "succeeded", summary.error
    assert summary.promoted, summary.decision
    assert summary.decision.startswith("promoted: held-out accuracy")
    assert "(margin 1.0)" in summary.decision
    assert summary.model == ModelId(name="default", version=expected)
    alias = registry.read_alias("default")
    assert alias is not None
    assert (alias.version, alias.history[-1]) == (expected, before.version)

    rolled = json.loads(synthdetect(workers, "models", "rollback", "default").stdout)
    assert rolled["production"] == before.version
    assert registry.resolve(ModelRef()) == before


def test_one_label_ends_in_a_failed_summary_and_a_redelivery_does_not_run_again(
    workers: Workers, data: RetrainData, registry: ModelRegistry
) -> None:
    job = retrain_job(
        f"one-label-{uuid.uuid4().hex[:8]}",
        dataset={"kind": "prefix", "prefix": f"{data.train}real/"},
    )
    versions = registry.list_versions("default")
    submit_retrain_job(job, workers.settings)
    first = summary_of(job, workers)
    assert first.status == "failed"
    assert first.model is None
    assert "at least two labels" in (first.error or "")

    submit_retrain_job(job, workers.settings)  # the same message again
    wait_until(
        lambda: log_events(workers.retrain, "job_already_finished", job.job_id),
        120,
        "the retrain worker to log the repeated job as already finished",
        interval_s=0.5,
        detail=workers.retrain.log_tail,
    )
    layout = RetrainLayout.of(jobs_root(data.registry, "default"), job.job_id)
    again = RetrainSummary.model_validate_json(registry.storage.get_bytes(layout.summary))
    assert again == first
    assert registry.list_versions("default") == versions
    assert len(log_events(workers.retrain, "retrain_started", job.job_id)) == 1
