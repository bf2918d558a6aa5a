"""A private RabbitMQ node on free loopback ports, for tests that stop and restart the broker.

The machine's own node (127.0.0.1:5672) is shared by everything and is never stopped;
this one has its own node name, ports, config, data and logs in a temporary folder, so
stopping it harms nobody, and restarting it keeps its durable queues. Starting takes
about 10 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.brokers import free_port

START_TIMEOUT_S = 120


class PrivateRabbitMQ:
    """``start``, ``stop`` and ``start`` again; ``url`` for the guest user (loopback only)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rabbitmq-"))
        self.port = free_port()
        self.node = f"test-{self.port}@localhost"
        self._dist_port = free_port()
        (self.folder / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.folder / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:  # the server drops to the rabbitmq user: let it write here
            shutil.chown(self.folder, "rabbitmq", "rabbitmq")
            for path in self.folder.iterdir():
                shutil.chown(path, "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self._dist_port),
                "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
                "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.folder / "log"),
                "RABBITMQ_PID_FILE": str(self.folder / "pid"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            }
        )
        return env

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            env=self._environment(),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )

    def start(self) -> None:
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self._environment(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        # `wait` blocks until the pid file exists and the node has booted.
        self._ctl("wait", str(self.folder / "pid"), "--timeout", str(START_TIMEOUT_S))

    def stop(self) -> None:
        self._ctl("stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):  # already stopped
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
