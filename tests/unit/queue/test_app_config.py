"""The Celery configuration that follows from settings: queues, delivery semantics, brokers."""

from __future__ import annotations

from typing import Any

import pytest

from contracts import ManifestInput, ModelRef, PrefixInput, TarInput, UriListInput
from worker.cli.submit import inputs_from_uris
from worker.queue.app import (
    celery_config,
    keep_retrain_apart,
    sqs_broker_url,
    sqs_transport_options,
)
from worker.queue.pool import POOL_PATH
from worker.queue.topology import (
    TASK_ACCEPT,
    TASK_DELIVER,
    TASK_RETRAIN,
    TASK_SHARD,
    QueueNames,
    amqp_queues,
    setup_sqs_queues,
)
from worker.settings import Settings, markdown_table


def test_queue_names_follow_the_prefix() -> None:
    names = QueueNames.from_settings(Settings(queue_prefix="t1"))
    assert names.task_queues == ("t1-classify", "t1-bulk", "t1-callbacks", "t1-retrain")
    assert (names.jobs, names.dead) == ("t1-jobs", "t1-dead")
    assert names.for_priority("bulk") == "t1-bulk"
    assert names.for_priority("interactive") == "t1-classify"


def test_rabbitmq_work_queues_are_quorum_queues_with_a_delivery_limit_and_dlx() -> None:
    settings = Settings(queue_prefix="t1", max_redeliveries=3)
    queues = amqp_queues(settings)
    for name in ("t1-classify", "t1-bulk", "t1-callbacks", "t1-retrain", "t1-jobs"):
        args = queues[name].queue_arguments
        assert args == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 3,
            "x-dead-letter-exchange": "t1-dead",
        }
    assert queues["t1-classify"].exchange.type == "topic"  # native delayed delivery
    assert queues["t1-dead"].exchange.name == "t1-dead"


def test_amqp_delivery_semantics() -> None:
    config = celery_config(Settings(queue_prefix="t1", worker_concurrency=8))
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_pool"] == POOL_PATH
    assert config["worker_concurrency"] == 8
    assert config["worker_prefetch_multiplier"] == 1
    assert [q.name for q in config["task_queues"]] == [
        "t1-classify",
        "t1-bulk",
        "t1-callbacks",
        "t1-retrain",
    ]
    router, static = config["task_routes"]
    assert static[TASK_DELIVER]["queue"].name == "t1-callbacks"
    assert static[TASK_RETRAIN]["queue"].name == "t1-retrain"
    bulk = router(TASK_SHARD, [{"priority": "bulk", "job_id": "j"}], {}, {})
    assert bulk["queue"].name == "t1-bulk"
    assert router(TASK_ACCEPT, [{"job_id": "j"}], {}, {})["queue"].name == "t1-classify"
    assert router(TASK_DELIVER, ["j", "s3://b/o"], {}, {}) is None


def test_sqs_uses_predefined_queues_and_no_fanout() -> None:
    settings = Settings(
        broker_url="sqs://", sqs_endpoint_url="http://127.0.0.1:5000", queue_prefix="t1"
    )
    config = celery_config(settings)
    assert config["worker_enable_remote_control"] is False
    assert config["task_routes"][1][TASK_DELIVER]["queue"].name == "t1-callbacks"
    options = sqs_transport_options(settings, {"t1-classify": "http://q/1"})
    assert options["predefined_queues"] == {"t1-classify": {"url": "http://q/1"}}
    assert options["is_secure"] is False
    assert sqs_broker_url(settings) == "sqs://127.0.0.1:5000"
    assert sqs_broker_url(Settings(broker_url="sqs://")) == "sqs://"


def test_submit_infers_the_input_kind() -> None:
    assert isinstance(inputs_from_uris(("s3://bkt/photos/",)), PrefixInput)
    assert isinstance(inputs_from_uris(("s3://bkt/a.tar",)), TarInput)
    assert isinstance(inputs_from_uris(("s3://bkt/m.jsonl",)), ManifestInput)
    both = inputs_from_uris(("s3://bkt/a.jpg", "s3://bkt/b.jpg"))
    assert isinstance(both, UriListInput)
    assert both.uris == ["s3://bkt/a.jpg", "s3://bkt/b.jpg"]
    assert ModelRef.parse("default@2").version == "2"


def test_the_configuration_table_documents_the_worker_settings() -> None:
    table = markdown_table()
    for variable in (
        "SYNTHDETECT_BROKER_URL",
        "SYNTHDETECT_WEBHOOK_SECRET",
        "SYNTHDETECT_CALLBACK_ALLOWLIST",
        "SYNTHDETECT_SHARD_SIZE",
        "SYNTHDETECT_SQS_VISIBILITY_TIMEOUT_S",
    ):
        assert variable in table


def test_webhook_secret_lookup() -> None:
    settings = Settings(webhook_secret="whsec_a", webhook_secrets={"team": "whsec_b"})
    assert settings.webhook_secret_for("default").get_secret_value() == "whsec_a"  # type: ignore[union-attr]
    assert settings.webhook_secret_for("team").get_secret_value() == "whsec_b"  # type: ignore[union-attr]
    assert settings.webhook_secret_for("nope") is None


# --- the retrain queue -------------------------------------------------------------------


def test_only_retrain_consumers_ask_rabbitmq_for_the_long_consumer_timeout() -> None:
    queues = amqp_queues(Settings(queue_prefix="t1", retrain_timeout_s=7200))
    assert queues["t1-retrain"].consumer_arguments == {"x-consumer-timeout": 7_200_000}
    assert queues["t1-classify"].consumer_arguments is None
    # a consumer argument: the queue's declaration is the same as every other work queue's
    assert queues["t1-retrain"].queue_arguments == queues["t1-classify"].queue_arguments


class ConsumedQueues:
    """The part of Celery's ``app.amqp.queues`` that ``keep_retrain_apart`` uses."""

    def __init__(self, names: list[str]) -> None:
        self.consume_from = dict.fromkeys(names)

    def deselect(self, names: list[str]) -> None:
        for name in names:
            del self.consume_from[name]


@pytest.mark.parametrize(
    ("consumed", "left"),
    [
        pytest.param(["t1-classify", "t1-bulk", "t1-callbacks", "t1-retrain"], 3, id="no -Q"),
        pytest.param(["t1-classify", "t1-retrain"], 1, id="mixed -Q"),
        pytest.param(["t1-retrain"], 1, id="retrain worker"),
        pytest.param(["t1-classify"], 1, id="classify worker"),
    ],
)
def test_the_retrain_queue_is_consumed_only_by_a_worker_started_for_it(
    consumed: list[str], left: int
) -> None:
    queues = ConsumedQueues(consumed)
    taken_out = keep_retrain_apart(queues, Settings(queue_prefix="t1"))
    assert taken_out == (len(consumed) > 1 and "t1-retrain" in consumed)
    assert len(queues.consume_from) == left
    assert ("t1-retrain" in queues.consume_from) == (consumed == ["t1-retrain"])


class RecordingSqs:
    def __init__(self) -> None:
        self.created: dict[str, dict[str, str]] = {}

    def create_queue(self, **request: Any) -> dict[str, str]:
        self.created[request["QueueName"]] = request.get("Attributes", {})
        return {"QueueUrl": f"http://sqs/{request['QueueName']}"}

    def get_queue_attributes(self, **request: Any) -> dict[str, dict[str, str]]:
        return {"Attributes": {"QueueArn": "arn:aws:sqs:us-east-1:0:t1-dead"}}


def test_the_sqs_retrain_queue_stays_invisible_for_the_retrain_timeout() -> None:
    client = RecordingSqs()
    settings = Settings(queue_prefix="t1", sqs_visibility_timeout_s=1800, retrain_timeout_s=7200)
    setup_sqs_queues(settings, client)
    assert client.created["t1-retrain"]["VisibilityTimeout"] == "7200"
    assert client.created["t1-classify"]["VisibilityTimeout"] == "1800"
