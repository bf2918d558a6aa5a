"""Start-up costs: ``synthdetect classify`` of one image, and what each import costs.

``python -X importtime`` prints every import with its own and cumulative
microseconds; the heaviest top-level packages tell where start-up goes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def classify_wall_s(image: Path, root: Path, env: dict[str, str], runs: int = 3) -> float:
    """The median wall time of ``synthdetect classify <image>`` (a new process each run)."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "worker.cli.main", "classify", str(image), "--no-progress"],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
        times.append(time.monotonic() - started)
    return sorted(times)[len(times) // 2]


def import_costs(
    module: str, root: Path, env: dict[str, str], top: int = 6
) -> list[tuple[str, float]]:
    """The ``top`` costliest packages imported by ``import module``: (name, cumulative ms)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    costs: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = _LINE.match(line)
        if match:
            package = match.group(4).split(".")[0]
            costs[package] = costs.get(package, 0.0) + int(match.group(1)) / 1000
    total = sum(costs.values())
    ranked = sorted(costs.items(), key=lambda item: -item[1])[:top]
    return [("(all)", total), *ranked]
