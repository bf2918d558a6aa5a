"""A real HTTP callback receiver whose answers a fault case scripts, path by path.

``plan(path, Answer(503, retry_after=4), Answer(hang_s=5))`` answers the next
requests to ``path`` that way, then 200. An answer can be a status, a status
with ``Retry-After``, or a hang (hold the request open longer than the sender's
timeout, then answer). Every request is recorded with its ``webhook-id`` and
whether the Standard Webhooks signature verified, so a case counts logical
callbacks (distinct ids) and deliveries (requests) separately. A refused
connection needs no server at all: ``reserve_port`` gives a port nobody listens
on, and ``Receiver(port=...)`` starts listening on it later.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Answer:
    """How to answer one request."""

    status: int = 200
    retry_after: int | None = None
    hang_s: float = 0.0
    """Hold the request this long before answering (the sender times out first)."""


@dataclass(frozen=True)
class Delivery:
    """One request that reached the receiver."""

    path: str
    webhook_id: str
    verified: bool
    body: dict[str, Any]
    answer: Answer
    at: float
    """``time.monotonic()`` when the request arrived."""

    @property
    def accepted(self) -> bool:
        """A 2xx the sender saw (a hung request's answer arrives after it gave up)."""
        return self.answer.status < 300 and self.answer.hang_s == 0


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    plans: dict[str, list[Answer]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)


def reserve_port() -> int:
    """A loopback port free right now (nothing listens: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that verifies and records callbacks."""

    def __init__(self, secret: str, port: int = 0) -> None:
        webhook = Webhook(secret)
        state = self._state = _State()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    body, verified = webhook.verify(raw, dict(self.headers)), True
                except WebhookVerificationError:
                    body, verified = json.loads(raw), False
                with state.lock:
                    planned = state.plans.get(self.path)
                    answer = planned.pop(0) if planned else Answer()
                    state.deliveries.append(
                        Delivery(
                            self.path,
                            self.headers.get("webhook-id", ""),
                            verified,
                            body,
                            answer,
                            time.monotonic(),
                        )
                    )
                if answer.hang_s:
                    time.sleep(answer.hang_s)
                try:
                    self.send_response(answer.status)
                    if answer.retry_after is not None:
                        self.send_header("retry-after", str(answer.retry_after))
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender hung up while we hung

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def plan(self, path: str, *answers: Answer) -> str:
        """Answer the next requests to ``path`` with ``answers``, then 200; returns the URL."""
        with self._state.lock:
            self._state.plans[path] = list(answers)
        return self.base_url + path

    def for_job(self, job_id: str) -> list[Delivery]:
        """Every request whose ``webhook-id`` is ``job_id``, in arrival order."""
        with self._state.lock:
            return [d for d in self._state.deliveries if d.webhook_id == job_id]

    def on_path(self, path: str) -> list[Delivery]:
        with self._state.lock:
            return [d for d in self._state.deliveries if d.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
