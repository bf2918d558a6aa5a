"""What the benchmark runs against: SeaweedFS, worker processes, a callback receiver.

All on loopback. Workers are real ``synthdetect worker`` processes configured by
``SYNTHDETECT_*`` variables, as a deployment would; their peak RSS is read from
``/proc/<pid>/status`` (VmHWM) and reset between phases through
``/proc/<pid>/clear_refs``, so each phase reports its own peak.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks import Webhook, WebhookVerificationError

from scripts.dev_s3 import (
    DEV_ACCESS_KEY_ID,
    DEV_REGION,
    DEV_SECRET_ACCESS_KEY,
    SeaweedPorts,
    SeaweedServer,
)
from worker.settings import Settings
from worker.storage import S3Store

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REPO = Path(__file__).parents[2]


def aws_environment() -> dict[str, str]:
    """Credentials SeaweedFS accepts (any), through the standard AWS variables."""
    return {
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": DEV_REGION,
    }


@contextmanager
def seaweed(data_dir: Path) -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 server on free loopback ports, stopped on exit."""
    os.environ.update(aws_environment())
    server = SeaweedServer.start(data_dir, SeaweedPorts.free())
    try:
        yield server
    finally:
        server.stop(grace_s=3.0)


def upload(settings: Settings, bucket: str, files: Iterable[tuple[str, bytes]]) -> int:
    """PUT every (key, bytes) into ``bucket`` with 16 threads; returns how many."""
    client = S3Store.from_settings(settings).client

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    count = 0
    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(put, files):
            count += 1
    return count


# --- callbacks -------------------------------------------------------------------------------


@dataclass
class CallbackLog:
    """Verified callbacks by job id, with the monotonic time each arrived."""

    arrived: dict[str, float] = field(default_factory=dict)
    rejected: int = 0
    condition: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, job_id: str, timeout_s: float) -> float | None:
        """When the job's verified callback arrived, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self.condition:
            while job_id not in self.arrived:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.condition.wait(left)
            return self.arrived[job_id]


@contextmanager
def callback_receiver() -> Iterator[tuple[str, CallbackLog]]:
    """An HTTP server that verifies Standard Webhooks signatures; yields (url, log)."""
    webhook = Webhook(SECRET)
    log = CallbackLog()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            at = time.monotonic()
            try:
                webhook.verify(raw, dict(self.headers))
                verified = True
            except WebhookVerificationError:
                verified = False
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
            with log.condition:
                if verified:
                    log.arrived.setdefault(self.headers.get("webhook-id", ""), at)
                else:
                    log.rejected += 1
                log.condition.notify_all()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/callback", log
    finally:
        server.shutdown()
        server.server_close()


# --- worker processes ----------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A running worker subprocess (its own session, so it is stopped with its children)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    started: float
    ready_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def reset_peak_rss(self) -> None:
        """Start a new peak: writing 5 to clear_refs resets VmHWM (Linux >= 4.0)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float:
        return _status_kb(self.pid, "VmHWM") / 1024

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024

    def events(self, name: str) -> list[dict[str, object]]:
        """The worker's JSON log lines with ``"event": name``."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == name:
                    found.append(event)
        return found

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(10)


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def worker_environment(settings: Settings, extra: dict[str, str], root: Path) -> dict[str, str]:
    """A worker's environment: SYNTHDETECT_* from ``settings``, AWS credentials, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHDETECT_")}
    env.update(aws_environment())
    env["PYTHONPATH"] = str(root)
    values = {
        "BROKER_URL": settings.broker_url,
        "QUEUE_PREFIX": settings.queue_prefix,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "WEBHOOK_SECRET": SECRET,
        "CALLBACK_ALLOWLIST": '["127.0.0.1"]',
        "DEVICE": "cpu",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    env.update({f"SYNTHDETECT_{k}": v for k, v in values.items() if v})
    env.update(extra)
    return env


def start_worker(
    command: list[str], env: dict[str, str], log_path: Path, root: Path, timeout_s: float = 120.0
) -> WorkerProcess:
    """Start ``command``; return once it logged ``worker_ready`` (``ready_s`` = how long)."""
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(process, log_path, started)
    while '"worker_ready"' not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() - started > timeout_s:
            worker.stop()
            raise RuntimeError(f"worker did not start:\n{worker.log_tail()}")
        time.sleep(0.02)
    worker.ready_s = time.monotonic() - started
    return worker


def python() -> str:
    return sys.executable
