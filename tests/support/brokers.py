"""Broker helpers for tests: reachability, a moto SQS server, queue clean-up."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kombu import Connection

from worker.queue.topology import amqp_queues, dead_letter_exchange, task_exchange
from worker.settings import Settings

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix(kind: str) -> str:
    """A queue prefix no other test run uses, so leftovers never meet a later run."""
    return f"t-{kind}-{uuid.uuid4().hex[:8]}"


def require_rabbitmq() -> None:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=3):
            pass
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not reachable on 127.0.0.1:5672 ({exc}); start it first")


def delete_amqp_topology(settings: Settings) -> None:
    """Remove every queue and exchange a test declared for ``settings.queue_prefix``."""
    with Connection(settings.broker_url) as connection:
        # kombu types channel() as its abstract StdChannel; over AMQP it is py-amqp's Channel.
        channel: Any = connection.channel()
        for name in amqp_queues(settings):
            channel.queue_delete(name)
        for exchange in (task_exchange(settings), dead_letter_exchange(settings)):
            channel.exchange_delete(exchange.name)


@contextmanager
def moto_sqs() -> Iterator[str]:
    """A moto server (a real HTTP endpoint); yields its URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
