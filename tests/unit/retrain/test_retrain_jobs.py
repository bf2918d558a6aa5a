"""The queue's retrain job without a broker: job -> request, summary, idempotency, callback.

Storage is in memory, the broker is a list, the webhook receiver an
``httpx.MockTransport``; ``run_retrain`` is replaced by a stand-in that reads the
request's items like the real one (the real one runs in ``tests/e2e/test_retrain.py``).
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr
from standardwebhooks import Webhook

from contracts import Budget, ModelId, RetrainJob, RetrainSummary
from tests.support.memory_store import MemoryStore
from worker.errors import JobRejected, ModelError
from worker.queue import retrain_tasks, tasks
from worker.retrain import jobs as retrain_jobs
from worker.retrain import records as retrain_records
from worker.retrain.records import RetrainServices
from worker.retrain.run import RetrainRequest
from worker.settings import Settings
from worker.storage import Storage

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REGISTRY = "s3://models/registry"
JOBS = f"{REGISTRY}/default/jobs"
LOCAL = lambda host, port: ["127.0.0.1"]  # noqa: E731


def tar_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(
        {
            "s3://data/set/real/a.jpg": b"a",
            "s3://data/set/real/b.jpg": b"b",
            "s3://data/set/synthetic/c.jpg": b"c",
            "s3://data/set/synthetic/notes.txt": b"not an image",
            "s3://data/held/real/d.jpg": b"d",
            "s3://data/held/synthetic/e.jpg": b"e",
            "s3://data/rows.jsonl": (
                b'{"uri": "s3://data/set/real/a.jpg", "label": "real"}\n'
                b'{"uri": "s3://data/set/synthetic/c.jpg", "label": "synthetic"}\n'
            ),
            "s3://data/set.tar": tar_of({"REAL/x.jpg": b"x", "synthetic/y.jpg": b"y"}),
        }
    )


class Broker:
    """Records the callback attempts the job functions enqueue."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str, float]] = []

    def enqueue_delivery(self, job_id: str, location: str, delay_s: float) -> None:
        self.deliveries.append((job_id, location, delay_s))


@pytest.fixture
def broker() -> Broker:
    return Broker()


def services_for(store: MemoryStore, broker: Broker, **settings: Any) -> RetrainServices:
    values: dict[str, Any] = {
        "model_registry": REGISTRY,
        "webhook_secret": SecretStr(SECRET),
        "callback_allowlist": ["127.0.0.1"],
        **settings,
    }
    return RetrainServices(Settings(**values), Storage(lambda: store), broker.enqueue_delivery)


@pytest.fixture
def services(store: MemoryStore, broker: Broker) -> RetrainServices:
    return services_for(store, broker)


class FakeTraining:
    """Stands in for ``run_retrain``: reads the items, reports progress, returns a summary."""

    def __init__(self, error: Exception | None = None) -> None:
        self.requests: list[RetrainRequest] = []
        self.items: list[tuple[str, str | None]] = []
        self.error = error

    def __call__(
        self,
        request: RetrainRequest,
        settings: Settings,
        storage: Storage,
        registry: Any,
        **kw: Any,
    ) -> RetrainSummary:
        self.requests.append(request)
        self.items = [(item.uri, item.true_label) for item in request.items()]
        kw["on_progress"](f"loaded {len(self.items)} images")
        if self.error is not None:
            raise self.error
        return RetrainSummary(
            job_id=request.job_id,
            status="succeeded",
            model=ModelId(name=request.model, version="2"),
            promoted=False,
            decision="kept as a candidate, worse than production: ...",
            heldout_accuracy=0.7,
            production_accuracy=0.9,
            duration_s=1.0,
        )


@pytest.fixture
def training(monkeypatch: pytest.MonkeyPatch) -> FakeTraining:
    fake = FakeTraining()
    monkeypatch.setattr(retrain_jobs, "run_retrain", fake)
    return fake


def make_job(job_id: str = "rt-1", **extra: Any) -> RetrainJob:
    return RetrainJob.model_validate(
        {
            "job_id": job_id,
            "dataset": {"kind": "prefix", "prefix": "s3://data/set/"},
            "budget": {"seconds": 20},
            "cv_folds": 3,
            "callback": {"url": "http://127.0.0.1:9/hook"},
            **extra,
        }
    )


def stored(store: MemoryStore, name: str, job_id: str = "rt-1") -> Any:
    return json.loads(store.objects[f"{JOBS}/{job_id}/{name}"])


# --- job -> request --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        pytest.param(
            {"kind": "prefix", "prefix": "s3://data/set/"},
            [
                ("s3://data/set/real/a.jpg", "real"),
                ("s3://data/set/real/b.jpg", "real"),
                ("s3://data/set/synthetic/c.jpg", "synthetic"),
            ],
            id="prefix: one folder per label",
        ),
        pytest.param(
            {"kind": "manifest", "manifest": "s3://data/rows.jsonl"},
            [("s3://data/set/real/a.jpg", "real"), ("s3://data/set/synthetic/c.jpg", "synthetic")],
            id="manifest: labels from the rows",
        ),
        pytest.param(
            {"kind": "tar", "tar": "s3://data/set.tar"},
            [
                ("s3://data/set.tar#REAL/x.jpg", "real"),
                ("s3://data/set.tar#synthetic/y.jpg", "synthetic"),
            ],
            id="tar: labels from member folders",
        ),
    ],
)
def test_every_dataset_kind_becomes_labelled_items(
    services: RetrainServices, dataset: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    job = make_job(dataset=dataset)
    request = retrain_jobs.retrain_request(job, services.settings, services.storage, job.budget)
    assert [(item.uri, item.true_label) for item in request.items()] == expected
    assert request.source == next(v for k, v in dataset.items() if k != "kind")


def test_the_request_carries_the_job_settings_and_a_holdout_prefix(
    services: RetrainServices,
) -> None:
    job = make_job(
        holdout={"prefix": "s3://data/held/"},
        promotion={"mode": "always"},
        seed=7,
    )
    request = retrain_jobs.retrain_request(job, services.settings, services.storage, job.budget)
    assert request.holdout_items is not None
    assert [(i.uri, i.true_label) for i in request.holdout_items()] == [
        ("s3://data/held/real/d.jpg", "real"),
        ("s3://data/held/synthetic/e.jpg", "synthetic"),
    ]
    assert (request.model, request.folds, request.seed, request.job_id) == ("default", 3, 7, "rt-1")
    assert request.promotion.mode == "always"
    assert request.budget == Budget(seconds=20)
    shared = retrain_jobs.retrain_request(
        make_job(), services.settings, services.storage, Budget(seconds=20)
    )
    assert shared.holdout_items is None
    assert shared.holdout_share == 0.2


def test_budgets_must_fit_the_retrain_timeout() -> None:
    assert retrain_jobs.fit_budget(Budget(seconds=600), 1200) == Budget(seconds=600)
    trials_only = retrain_jobs.fit_budget(Budget(seconds=None, trials=3), 3600)
    assert trials_only == Budget(seconds=3000, trials=3)
    with pytest.raises(JobRejected, match="SYNTHDETECT_RETRAIN_TIMEOUT_S=1200"):
        retrain_jobs.fit_budget(Budget(seconds=601), 1200)


def test_a_malformed_message_is_rejected_naming_the_field() -> None:
    with pytest.raises(JobRejected, match=r"schema violation: cv_folds"):
        retrain_jobs.parse_retrain_job(
            {"job_id": "x", "dataset": {"kind": "prefix", "prefix": "s3://bkt/b/"}, "cv_folds": 1}
        )


# --- running a job ----------------------------------------------------------------------


def test_a_job_publishes_its_summary_logs_progress_and_queues_its_callback(
    services: RetrainServices, store: MemoryStore, broker: Broker, training: FakeTraining
) -> None:
    with structlog.testing.capture_logs() as logs:
        summary = retrain_jobs.run_retrain_job(make_job(), services)
    assert summary.model == ModelId(name="default", version="2")
    assert stored(store, "summary.json")["decision"].startswith("kept as a candidate")
    assert RetrainJob.model_validate(stored(store, "job.json")) == make_job()
    assert len(training.items) == 3
    assert broker.deliveries == [("rt-1", JOBS, 0.0)]
    progress = [e for e in logs if e["event"] == "retrain_progress"]
    assert progress == [
        {
            "event": "retrain_progress",
            "job_id": "rt-1",
            "model": "default",
            "message": "loaded 3 images",
            "log_level": "info",
        }
    ]


def test_a_redelivered_job_does_not_train_again_and_only_ensures_its_callback(
    services: RetrainServices, store: MemoryStore, broker: Broker, training: FakeTraining
) -> None:
    first = retrain_jobs.run_retrain_job(make_job(), services)
    again = retrain_jobs.run_retrain_job(make_job(), services)
    assert again == first
    assert len(training.requests) == 1
    assert len(broker.deliveries) == 2  # the callback was not delivered yet: queue it again
    store.objects[f"{JOBS}/rt-1/delivery.json"] = json.dumps(
        {"job_id": "rt-1", "url": "http://127.0.0.1:9/hook", "state": "delivered"}
    ).encode()
    retrain_jobs.run_retrain_job(make_job(), services)
    assert len(broker.deliveries) == 2
    assert len(training.requests) == 1


def test_a_reused_job_id_is_rejected(services: RetrainServices, training: FakeTraining) -> None:
    retrain_jobs.run_retrain_job(make_job(), services)
    with pytest.raises(JobRejected, match="already used"):
        retrain_jobs.run_retrain_job(make_job(seed=3), services)


def test_data_that_cannot_train_ends_in_a_failed_summary(
    services: RetrainServices, store: MemoryStore, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTraining(error=ModelError("need at least two labels to train, found ['real']"))
    monkeypatch.setattr(retrain_jobs, "run_retrain", fake)
    summary = retrain_jobs.run_retrain_job(make_job(), services)
    assert summary.status == "failed"
    assert summary.model is None
    assert "two labels" in (summary.error or "")
    assert stored(store, "summary.json")["status"] == "failed"
    assert broker.deliveries == [("rt-1", JOBS, 0.0)]


def test_a_missing_manifest_ends_in_a_failed_summary(
    services: RetrainServices, training: FakeTraining
) -> None:
    job = make_job(dataset={"kind": "manifest", "manifest": "s3://data/nope.jsonl"})
    summary = retrain_jobs.run_retrain_job(job, services)
    assert summary.status == "failed"
    assert "s3://data/nope.jsonl" in (summary.error or "")


@pytest.mark.parametrize(
    ("settings", "job_extra", "reason"),
    [
        pytest.param(
            {"model_registry": ""}, {}, "SYNTHDETECT_MODEL_REGISTRY is unset", id="no registry"
        ),
        pytest.param(
            {},
            {"callback": {"url": "http://127.0.0.1:9/h", "secret_ref": "other"}},
            "secret_ref 'other'",
            id="no callback secret",
        ),
        pytest.param(
            {"retrain_timeout_s": 1800}, {"budget": {"seconds": 1500}}, "does not fit", id="budget"
        ),
    ],
)
def test_jobs_this_worker_can_never_run_are_rejected_before_training(
    store: MemoryStore,
    broker: Broker,
    training: FakeTraining,
    settings: dict[str, Any],
    job_extra: dict[str, Any],
    reason: str,
) -> None:
    with pytest.raises(JobRejected, match=reason):
        retrain_jobs.run_retrain_job(make_job(**job_extra), services_for(store, broker, **settings))
    assert training.requests == []
    assert not any("/jobs/" in uri for uri in store.objects)


# --- the callback ------------------------------------------------------------------------


def test_the_summary_is_delivered_signed_and_retried_on_schedule(
    services: RetrainServices, store: MemoryStore, broker: Broker, training: FakeTraining
) -> None:
    retrain_jobs.run_retrain_job(make_job(), services)
    answers = [503, 204]
    received: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(answers.pop(0))

    client = httpx.Client(transport=httpx.MockTransport(handle))
    first = retrain_records.deliver("rt-1", JOBS, services, client, LOCAL)
    assert first is not None
    assert first.state == "pending"
    job_id, location, delay = broker.deliveries[-1]
    assert (job_id, location) == ("rt-1", JOBS)
    assert delay > 0
    second = retrain_records.deliver("rt-1", JOBS, services, client, LOCAL)
    assert second is not None
    assert second.state == "delivered"
    body = Webhook(SECRET).verify(received[-1].content, dict(received[-1].headers))
    assert body == stored(store, "summary.json")
    assert body["kind"] == "retrain"
    assert received[-1].headers["webhook-id"] == "rt-1"
    assert stored(store, "delivery.json")["state"] == "delivered"
    assert retrain_records.deliver("rt-1", JOBS, services, client, LOCAL) == second
    assert len(received) == 2


def test_nothing_is_delivered_for_an_unknown_job(services: RetrainServices) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert retrain_records.deliver("nope", JOBS, services, client, LOCAL) is None


# --- the Celery tasks stay thin ------------------------------------------------------------


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    seen: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(retrain_jobs, "run_retrain_job", lambda *a: seen.append(("retrain", a)))
    monkeypatch.setattr(retrain_records, "deliver", lambda *a: seen.append(("deliver retrain", a)))
    monkeypatch.setattr(tasks.jobs, "deliver", lambda *a: seen.append(("deliver classify", a)))
    return seen


def test_the_retrain_task_parses_and_hands_over(calls: list[tuple[str, tuple[Any, ...]]]) -> None:
    retrain_tasks.retrain.run(make_job().model_dump(mode="json", exclude_none=True))
    ((what, (job, _services)),) = calls
    assert what == "retrain"
    assert job == make_job()
    with pytest.raises(JobRejected, match="schema violation"):
        retrain_tasks.retrain.run({"job_id": "x"})


def test_the_deliver_task_dispatches_by_kind(calls: list[tuple[str, tuple[Any, ...]]]) -> None:
    tasks.deliver_callback.run("rt-1", JOBS, kind="retrain")
    tasks.deliver_callback.run("job-1", "s3://out/res")
    assert [(what, args[:2]) for what, args in calls] == [
        ("deliver retrain", ("rt-1", JOBS)),
        ("deliver classify", ("job-1", "s3://out/res")),
    ]
    with pytest.raises(JobRejected, match="unknown callback kind"):
        tasks.deliver_callback.run("x", "y", kind="other")


def test_retrain_callbacks_are_queued_with_their_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.app, "send_task", lambda name, **options: sent.append(options))
    tasks.runtime.retrain_services().enqueue_delivery("rt-1", JOBS, 0.0)
    tasks.runtime.enqueue_delivery("job-1", "s3://out/res", 0.0)
    assert sent[0]["args"] == ["rt-1", JOBS]
    assert sent[0]["kwargs"] == {"kind": "retrain"}
    assert sent[0]["queue"].endswith("-callbacks")
    assert "kwargs" not in sent[1]  # classify messages keep their old shape
