"""``CallbackReceiver``: a real HTTP server that verifies Standard Webhooks signatures.

Tests script its answers per path (``plan("/flaky", 503, 503)`` answers 503
twice, then 200) and read what arrived from ``deliveries``. ``hold(path)`` keeps
the next request to a path waiting for its answer until the test releases it (a
slow receiver, to do something while a worker is inside a callback attempt).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Delivery:
    path: str
    webhook_id: str
    verified: bool
    body: dict[str, Any]
    answered: int
    at: float


@dataclass(frozen=True)
class Hold:
    """``arrived`` is set when the held request came in; set ``release`` to answer it."""

    arrived: threading.Event
    release: threading.Event
    timeout_s: float


class CallbackReceiver:
    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)
        self._lock = threading.Lock()
        self._plans: dict[str, list[int]] = {}
        self._holds: dict[str, Hold] = {}
        self.deliveries: list[Delivery] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    body, verified = receiver._webhook.verify(raw, dict(self.headers)), True
                except WebhookVerificationError:
                    body, verified = json.loads(raw), False
                status = receiver._next_status(self.path)
                with receiver._lock:
                    hold = receiver._holds.pop(self.path, None)
                if hold is not None:
                    hold.arrived.set()
                    hold.release.wait(hold.timeout_s)
                with receiver._lock:
                    receiver.deliveries.append(
                        Delivery(
                            self.path,
                            self.headers.get("webhook-id", ""),
                            verified,
                            body,
                            status,
                            time.monotonic(),
                        )
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def plan(self, path: str, *statuses: int) -> str:
        """Answer the next requests to ``path`` with ``statuses``, then 200; returns the URL."""
        with self._lock:
            self._plans[path] = list(statuses)
        return self.base_url + path

    def hold(self, path: str, timeout_s: float = 120.0) -> Hold:
        """Keep the next request to ``path`` unanswered until ``release`` is set."""
        hold = Hold(threading.Event(), threading.Event(), timeout_s)
        with self._lock:
            self._holds[path] = hold
        return hold

    def _next_status(self, path: str) -> int:
        with self._lock:
            planned = self._plans.get(path)
            return planned.pop(0) if planned else 200

    def for_job(self, job_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.webhook_id == job_id]

    def wait_delivered(self, job_ids: list[str], timeout_s: float) -> dict[str, list[Delivery]]:
        """Wait until every job has a 2xx-answered delivery; returns all deliveries by job."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = {job_id: self.for_job(job_id) for job_id in job_ids}
            done = all(any(d.answered < 300 for d in found[j]) for j in job_ids)
            if done or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def running_receiver(secret: str) -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver(secret)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
