"""What the fault cases run against, all real and on loopback: SeaweedFS, RabbitMQ, workers.

``Stack`` owns a SeaweedFS server that can be stopped and started again on the
same ports and data (an S3 outage), a private RabbitMQ node that can be stopped
and started (a broker outage; the machine's own node on 5672 is never touched),
the callback ``Receiver``, and ``synthdetect worker`` processes started the way a
deployment starts them (``SYNTHDETECT_*`` variables). ``RssMonitor`` samples the
peak resident memory (``VmHWM``) of every worker's process tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

from scripts.dev_s3 import SeaweedPorts, SeaweedServer
from scripts.faults.receiver import Receiver
from scripts.throughput.services import SECRET, aws_environment, upload, worker_environment
from tests.support.rabbitmq_node import PrivateRabbitMQ
from worker.queue.producer import producer_app
from worker.queue.topology import amqp_queues, dead_letter_exchange, task_exchange
from worker.settings import Settings
from worker.storage import S3Store, Storage

REPO = Path(__file__).parents[2]
SAMPLE = REPO / "tests" / "data" / "cifake-sample"
SHARED_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
WORKER_START_TIMEOUT_S = 180.0
RSS_SAMPLE_S = 0.25


def _hwm_kb(pid: int) -> int:
    """Peak resident set (VmHWM) of one process in kB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from ``/proc/<pid>/task/*/children``); [] once it is gone."""
    if not Path(f"/proc/{pid}").exists():
        return []
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
    return found


@dataclass
class RssMonitor:
    """Peak memory of each worker's process tree (sum of the processes' VmHWM).

    A thread samples every ``RSS_SAMPLE_S``, so a worker that is SIGKILLed keeps
    the peak it reached before it died. ``begin`` starts a new window: it resets
    the kernel's high-water marks of live workers (``clear_refs``) and forgets
    the peaks seen so far.
    """

    pids: set[int] = field(default_factory=set)
    peaks_kb: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def track(self, pid: int) -> None:
        with self.lock:
            self.pids.add(pid)
        self.sample()

    def begin(self) -> None:
        with self.lock:
            for pid in self.pids:
                for member in _tree(pid):
                    with contextlib.suppress(OSError):
                        Path(f"/proc/{member}/clear_refs").write_text("5")
            self.peaks_kb.clear()
        self.sample()

    def sample(self) -> None:
        with self.lock:
            for pid in list(self.pids):
                members = _tree(pid)
                if not members:
                    self.pids.discard(pid)
                    continue
                total = sum(_hwm_kb(member) for member in members)
                self.peaks_kb[pid] = max(self.peaks_kb.get(pid, 0), total)

    def peak_mb(self) -> float:
        """The highest peak of any one worker (process tree) in this window."""
        self.sample()
        with self.lock:
            return max(self.peaks_kb.values(), default=0) / 1024

    def _loop(self) -> None:
        while not self.stopped.wait(RSS_SAMPLE_S):
            self.sample()


@dataclass
class Worker:
    """A running ``synthdetect worker`` (its own session: signals reach its children)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no goodbye, messages stay unacknowledged."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(30)

    def terminate(self) -> None:
        """SIGTERM to the worker process alone, as Kubernetes sends it to PID 1."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def start_errors(self) -> list[str]:
        """Lines at ERROR or CRITICAL level logged while the worker started (up to a few
        lines after ``worker_ready``: Celery's consumer steps finish around it)."""
        lines = self.log_text().splitlines()
        ready = next((i for i, line in enumerate(lines) if '"worker_ready"' in line), None)
        if ready is None:
            return []
        return [
            line
            for line in lines[: ready + 3]
            if '"level": "error"' in line
            or '"level": "critical"' in line
            or "ERROR/" in line
            or "CRITICAL/" in line
        ]


class Stack:
    """SeaweedFS + a broker + a callback receiver + a bucket of sample images."""

    def __init__(self, root: Path, private_broker: bool) -> None:
        self.root = root
        os.environ.update(aws_environment())
        self.s3_dir = root / "s3"
        self.seaweed = SeaweedServer.start(self.s3_dir, SeaweedPorts.free())
        self.rabbit: PrivateRabbitMQ | None = None
        if private_broker:
            self.rabbit = PrivateRabbitMQ()
            self.rabbit.start()
        self.broker_url = self.rabbit.url if self.rabbit else SHARED_RABBITMQ
        self.receiver = Receiver(SECRET)
        self.monitor = RssMonitor()
        self.monitor.start()
        self.workers: list[Worker] = []
        self.bucket = f"faults-{uuid.uuid4().hex[:10]}"
        base = self.settings("faults-setup")
        S3Store.from_settings(base).client.create_bucket(Bucket=self.bucket)
        files = [(f"cifake/{p.parent.name}/{p.name}", p.read_bytes()) for p in self._sample()]
        upload(base, self.bucket, files)
        self.images = [f"s3://{self.bucket}/{key}" for key, _ in files]
        self.storage = Storage.from_settings(base)

    @staticmethod
    def _sample() -> list[Path]:
        return sorted(SAMPLE.glob("*/*.jpg"))

    @classmethod
    @contextmanager
    def running(cls, root: Path, private_broker: bool = True) -> Iterator[Stack]:
        stack = cls(root, private_broker)
        try:
            yield stack
        finally:
            stack.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.monitor.stopped.set()
        self.receiver.close()
        if self.rabbit is not None:
            self.rabbit.remove()
        self.seaweed.stop(grace_s=3.0)

    # --- faults on the services -------------------------------------------------------------

    def s3_down(self) -> None:
        """Kill SeaweedFS (SIGKILL: the outage starts at once; SIGTERM can take 15 s):
        every S3 request is refused until ``s3_up``."""
        self.seaweed.stop(grace_s=0.0)

    def s3_up(self) -> None:
        """Start SeaweedFS again on the same ports with the same data."""
        if not self.seaweed.is_running():
            self.seaweed = SeaweedServer.start(self.s3_dir, self.seaweed.ports)

    def broker_down(self, hard: bool = False) -> None:
        """Stop the private node: ``rabbitmqctl stop``, or SIGKILL (``hard``: instant, so
        the outage starts exactly when asked, as a crash would)."""
        if self.rabbit is None:
            raise RuntimeError("broker faults need the private RabbitMQ node (--shared-broker)")
        if not hard:
            self.rabbit.stop()
            return
        pid = int((self.rabbit.folder / "pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (self.rabbit.folder / "pid").unlink(missing_ok=True)  # `rabbitmqctl wait` reads it

    def broker_up(self) -> None:
        if self.rabbit is not None:
            with contextlib.suppress(subprocess.SubprocessError):
                self.rabbit.start()  # already running: rabbitmq-server -detached fails

    # --- workers and producers --------------------------------------------------------------

    def settings(self, prefix: str, **overrides: object) -> Settings:
        """Settings of a worker (and its producers) on queue prefix ``prefix``."""
        values: dict[str, object] = {
            "broker_url": self.broker_url,
            "queue_prefix": prefix,
            "s3_endpoint_url": self.seaweed.endpoint_url,
            "device": "cpu",
            "shard_size": 10,
            "max_wait_ms": 20.0,
            "callback_backoff_base_s": 1.0,
            "callback_timeout_s": 3.0,
            "callback_allowlist": ["127.0.0.1"],
            "webhook_secret": SECRET,
        }
        values.update(overrides)
        return Settings.model_validate(values)

    def start_worker(
        self, settings: Settings, *args: str, env: dict[str, str] | None = None
    ) -> Worker:
        """Start a worker and return once it logged ``worker_ready``."""
        name = f"{settings.queue_prefix}-{uuid.uuid4().hex[:6]}"
        extra = {
            "SYNTHDETECT_SHARD_SIZE": str(settings.shard_size),
            "SYNTHDETECT_MAX_WAIT_MS": str(settings.max_wait_ms),
            "SYNTHDETECT_CALLBACK_BACKOFF_BASE_S": str(settings.callback_backoff_base_s),
            "SYNTHDETECT_CALLBACK_TIMEOUT_S": str(settings.callback_timeout_s),
            **(env or {}),
        }
        environment = worker_environment(settings, extra, REPO)
        log_path = self.root / f"{name}.log"
        command = [sys.executable, "-m", "worker.cli.main", "worker", f"--hostname={name}@%h"]
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*command, *args],
                cwd=REPO,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, process, log_path)
        self.workers.append(worker)
        self.monitor.track(process.pid)
        while '"worker_ready"' not in worker.log_text():
            if not worker.alive() or time.monotonic() - started > WORKER_START_TIMEOUT_S:
                worker.stop()
                raise RuntimeError(f"worker {name} did not start:\n{worker.log_tail()}")
            time.sleep(0.1)
        worker.ready_s = time.monotonic() - started
        return worker

    def producer(self, settings: Settings) -> Celery:
        return producer_app(settings)

    def remove_topology(self, settings: Settings) -> None:
        """Delete the prefix's queues and exchanges (best effort: the broker may be down)."""
        from kombu import Connection

        with contextlib.suppress(Exception), Connection(settings.broker_url) as connection:
            channel = connection.channel()
            for name in amqp_queues(settings):
                channel.queue_delete(name)  # type: ignore[attr-defined]
            for exchange in (task_exchange(settings), dead_letter_exchange(settings)):
                channel.exchange_delete(exchange.name)  # type: ignore[attr-defined]
