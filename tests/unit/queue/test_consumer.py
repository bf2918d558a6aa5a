"""SynthdetectConsumer: poison is dead-lettered with a reason; queue selection is exact."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu.exceptions import ContentDisallowed, DecodeError

from worker.queue.app import keep_retrain_apart, take_plain_json_queues
from worker.queue.consumer import (
    DelayedDeliveryAfterTopology,
    SynthdetectConsumer,
    source_queue,
    task_job_id,
)
from worker.settings import Settings


class FakeMessage:
    def __init__(self, body: bytes, routing_key: str = "t1-classify", **headers: Any) -> None:
        self.body = body
        self.headers = headers
        self.content_type = "application/json"
        self.content_encoding = "utf-8"
        self.delivery_info = {"routing_key": routing_key}
        self.settled: list[str] = []

    def ack(self) -> None:
        self.settled.append("ack")

    def reject(self, requeue: bool = False) -> None:
        self.settled.append(f"reject(requeue={requeue})")


class RecordingSink:
    def __init__(self, fail: bool = False) -> None:
        self.letters: list[tuple[bytes | str, str, str, str | None]] = []
        self.fail = fail

    def send(self, body: bytes | str, reason: str, source_queue: str, job_id: str | None) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.letters.append((body, reason, source_queue, job_id))


def consumer(sink: RecordingSink) -> SynthdetectConsumer:
    # Only the poison hooks are exercised: no connection, no blueprint.
    instance = SynthdetectConsumer.__new__(SynthdetectConsumer)
    instance._dead_letters = sink
    return instance


@pytest.fixture(autouse=True)
def _prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHDETECT_QUEUE_PREFIX", "t1")
    from worker.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


TASK_BODY = json.dumps([[{"job_id": "j-9"}], {}, {}]).encode()


@pytest.mark.parametrize(
    ("hook", "reason"),
    [
        (lambda c, m: c.on_decode_error(m, DecodeError("Expecting value")), "undecodable body"),
        (
            lambda c, m: c.on_decode_error(m, ContentDisallowed("pickle")),
            "wrong content type: 'application/json' is not accepted",
        ),
        (
            lambda c, m: c.on_unknown_message(None, m),
            "not a task message: it has no Celery task header; plain JSON jobs go to t1-jobs "
            "(ClassifyJob) or t1-retrain-jobs (RetrainJob)",
        ),
        (
            lambda c, m: c.on_unknown_task(None, m, KeyError("x")),
            "unknown task 'nope': no such task on this worker",
        ),
        (lambda c, m: c.on_invalid_task(None, m, ValueError("bad")), "invalid task message: bad"),
        (
            lambda c, m: c.on_invalid_task(None, m, ContentDisallowed("pickle")),
            "wrong content type",
        ),
    ],
    ids=["undecodable", "content type", "no task header", "unknown task", "invalid", "pickle"],
)
def test_poison_is_dead_lettered_with_its_reason_then_acknowledged(hook: Any, reason: str) -> None:
    sink = RecordingSink()
    message = FakeMessage(TASK_BODY, "0.1.1.t1-classify", task="nope")
    hook(consumer(sink), message)
    [(body, said, source, job_id)] = sink.letters
    assert said.startswith(reason)
    assert (body, source, job_id) == (TASK_BODY, "t1-classify", "j-9")
    assert message.settled == ["ack"]


def test_poison_that_cannot_be_dead_lettered_is_requeued_not_dropped() -> None:
    message = FakeMessage(b"\xff garbage")
    consumer(RecordingSink(fail=True)).on_decode_error(message, DecodeError("no"))
    assert message.settled == ["reject(requeue=True)"]


def test_source_queue_and_job_id_survive_any_body() -> None:
    assert source_queue({"routing_key": "1.0.1.t1-callbacks"}) == "t1-callbacks"
    assert source_queue({}) == "unknown"
    sqs = {"sqs_queue": "http://127.0.0.1:5/000000000000/t1-bulk", "routing_key": "t1-classify"}
    assert source_queue(sqs) == "t1-bulk"
    assert task_job_id(FakeMessage(b"\xff not json")) is None
    assert task_job_id(FakeMessage(json.dumps([["job-3", "s3://x"], {}, {}]).encode())) == "job-3"


def test_delayed_delivery_starts_after_the_topology_is_declared() -> None:
    steps = SynthdetectConsumer.Blueprint.default_steps
    assert "worker.queue.consumer:DelayedDeliveryAfterTopology" in steps
    assert not any(step.endswith(":DelayedDelivery") for step in steps)
    assert "worker.queue.ingest:TopologySetup" in DelayedDeliveryAfterTopology.requires


# --- exactly the queues -Q names --------------------------------------------------------------


class CeleryQueues(dict[str, object]):
    """The part of Celery's ``app.amqp.queues`` that queue selection uses."""

    def __init__(self, declared: list[str], consumed: list[str]) -> None:
        super().__init__(dict.fromkeys([*declared, *consumed]))
        self.consume_from = dict.fromkeys(consumed)

    def deselect(self, names: list[str]) -> None:
        for name in names:
            self.consume_from.pop(name, None)


TASK_QUEUES = ["t1-classify", "t1-bulk", "t1-callbacks", "t1-retrain"]


@pytest.mark.parametrize(
    ("named", "celery_consumes", "ingested"),
    [
        pytest.param(
            ["t1-classify", "t1-bulk", "t1-callbacks", "t1-jobs", "t1-retrain-jobs"],
            ["t1-classify", "t1-bulk", "t1-callbacks"],
            ["t1-jobs", "t1-retrain-jobs"],
            id="synthdetect worker default",
        ),
        pytest.param(
            TASK_QUEUES,
            ["t1-classify", "t1-bulk", "t1-callbacks"],
            ["t1-jobs", "t1-retrain-jobs"],
            id="celery worker without -Q",
        ),
        pytest.param(["t1-retrain"], ["t1-retrain"], [], id="retrain worker"),
        pytest.param(
            ["t1-retrain", "t1-retrain-jobs"], ["t1-retrain"], ["t1-retrain-jobs"], id="+ ingest"
        ),
        pytest.param(["t1-bulk"], ["t1-bulk"], [], id="bulk worker"),
        pytest.param(["t1-classify", "t1-jobs"], ["t1-classify"], ["t1-jobs"], id="classify"),
    ],
)
def test_a_worker_consumes_exactly_the_queues_q_names(
    named: list[str], celery_consumes: list[str], ingested: list[str]
) -> None:
    settings = Settings(queue_prefix="t1")
    queues = CeleryQueues(TASK_QUEUES, named)
    assert take_plain_json_queues(queues, settings) == ingested
    keep_retrain_apart(queues, settings)
    assert list(queues.consume_from) == celery_consumes
    assert not {"t1-jobs", "t1-retrain-jobs"} & set(queues)  # never Celery task queues
