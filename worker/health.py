"""Liveness and readiness: named checks, their JSON answer, and the ops HTTP server.

A worker serves three paths on ``SYNTHDETECT_METRICS_PORT`` (one port to open,
probe and scrape)::

    GET /metrics   Prometheus text format
    GET /livez     200 while the process works (restart it when this fails)
    GET /readyz    200 while it can take work (send it none when this fails)

Both probes answer JSON that names what is wrong, e.g. ``{"status": "failing",
"failing": ["broker"], "checks": {"broker": {"ok": false, "detail": "not
connected ..."}, ...}}`` with status 503. Checks must answer at once: the ones
that need the network read what a background prober found last
(``worker.queue.probes``), so a probe never waits on S3 or the broker.

The server is ``http.server`` from the standard library (a thread per request,
daemon threads): three read-only paths need no web framework.

``python -m worker.health [--live]`` asks the local endpoint and exits 0 when it
answers 200: the container image's ``HEALTHCHECK`` (no curl in a slim image).
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from worker.logs import get_logger

log = get_logger(__name__)

LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict and a sentence for the operator (what is wrong, or what is fine)."""

    ok: bool
    detail: str


Check = Callable[[], CheckResult]
Kind = Literal["live", "ready"]


@dataclass
class HealthChecks:
    """The process's liveness and readiness checks, by name."""

    liveness: dict[str, Check] = field(default_factory=dict)
    readiness: dict[str, Check] = field(default_factory=dict)

    def report(self, kind: Kind) -> tuple[bool, dict[str, Any]]:
        """Run every check of ``kind``; (all passed, the JSON body)."""
        checks = self.liveness if kind == "live" else self.readiness
        results: dict[str, dict[str, Any]] = {}
        for name, check in checks.items():
            try:
                result = check()
            except Exception as exc:  # noqa: BLE001 - a broken check fails, never a 500
                result = CheckResult(False, f"the check raised {type(exc).__name__}: {exc}")
            results[name] = {"ok": result.ok, "detail": result.detail}
        failing = [name for name, result in results.items() if not result["ok"]]
        body = {"status": "failing" if failing else "ok", "failing": failing, "checks": results}
        return not failing, body


class _OpsHandler(BaseHTTPRequestHandler):
    server: _OpsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == METRICS_PATH:
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path in (LIVENESS_PATH, READINESS_PATH):
            ok, body = self.server.checks.report("live" if path == LIVENESS_PATH else "ready")
            self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
        else:
            message = {
                "error": f"no such path; try {METRICS_PATH}, {LIVENESS_PATH}, {READINESS_PATH}"
            }
            self._send(404, json.dumps(message).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes arrive every few seconds: no access log line for each."""


class _OpsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, checks: HealthChecks) -> None:
        super().__init__(("0.0.0.0", port), _OpsHandler)
        self.checks = checks


_lock = threading.Lock()
_servers: dict[int, _OpsServer] = {}


def serve_ops(port: int, checks: HealthChecks) -> int | None:
    """Serve /metrics, /livez and /readyz on ``port`` (once per process; 0 = off).

    Returns the bound port (useful when ``port`` is taken from settings) or None when off.
    """
    if not port:
        return None
    with _lock:
        if port not in _servers:
            server = _OpsServer(port, checks)
            thread = threading.Thread(target=server.serve_forever, name="ops-http", daemon=True)
            thread.start()
            _servers[port] = server
            log.info(
                "ops_endpoint_serving",
                port=port,
                paths=[METRICS_PATH, LIVENESS_PATH, READINESS_PATH],
            )
        return int(_servers[port].server_address[1])


def probe(port: int, kind: Kind = "ready", timeout_s: float = 5.0) -> tuple[bool, str]:
    """Ask the local endpoint; (answered 200, the body or the error)."""
    path = LIVENESS_PATH if kind == "live" else READINESS_PATH
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as answer:
            return answer.status == 200, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return False, exc.read().decode(errors="replace")
    except OSError as exc:
        return False, f"no answer on port {port}: {exc}"


def main(argv: list[str]) -> int:
    """``python -m worker.health [--live]``: exit 0 when the local worker is ready (live)."""
    from worker.settings import get_settings

    if argv not in ([], ["--live"], ["--ready"]):
        print("usage: python -m worker.health [--live | --ready]", file=sys.stderr)
        return 2
    port = get_settings().metrics_port
    if not port:
        print("SYNTHDETECT_METRICS_PORT is 0: the worker serves no probes", file=sys.stderr)
        return 1
    ok, text = probe(port, "live" if argv == ["--live"] else "ready")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
