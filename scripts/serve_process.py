"""A real ``synthdetect serve`` process: users and keys made with the CLI, started, probed,
stopped with SIGTERM. Used by the end-to-end tests and ``scripts/bench_invoke.py``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).parents[1]
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def synthdetect(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    """Run one ``synthdetect`` command; its stdout (raises with stderr on failure)."""
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"synthdetect {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def serve_environment(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a serve process: ``SYNTHDETECT_<KEY>`` for each of ``settings``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["SYNTHDETECT_SERVE_DATA_DIR"] = str(data_dir)
    env.setdefault("SYNTHDETECT_LOG_FORMAT", "json")
    env.update({f"SYNTHDETECT_{key.upper()}": value for key, value in settings.items()})
    return env


@dataclass
class ServeProcess:
    """A running ``synthdetect serve``; ``url`` is its base URL."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path, port: int | None = None) -> ServeProcess:
        """Start serve and return once ``/readyz`` answers 200 (the model is loaded)."""
        port = port or free_port()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli.main", "serve", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        served = cls(process, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not served.ready():
            if process.poll() is not None or time.monotonic() > deadline:
                served.stop()
                raise RuntimeError(f"synthdetect serve did not start:\n{served.log_tail()}")
            time.sleep(0.2)
        return served

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return int(self.process.returncode)
