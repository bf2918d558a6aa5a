"""The invoke API against the engine alone, in one run: latency and throughput.

    PYTHONPATH=. .venv/bin/python -m scripts.bench_invoke [--quick] [--clients 50]

Also a phase of ``scripts/bench`` (``--skip invoke`` leaves it out). Two images: a
32x32 CIFAKE JPEG and a 2 MP photo-like JPEG (1632x1224, which the default model
judges out of domain: decoded, scored and abstained like any such upload).

1. **engine alone**, in this process: the job pipeline (``classify_items``, urgent
   lane) on the image's bytes, one call after another (p50/p99), then from
   ``--clients`` threads at once for ``--seconds`` (images/s);
2. **over HTTP**: a real ``synthdetect serve`` process (API key from the CLI),
   ``POST /v1/invoke`` with the raw bytes, one request after another (p50/p99),
   then ``--clients`` concurrent clients (one asyncio loop, one connection each)
   for ``--seconds``.

The clients share the machine with the server; on a 2-core machine they take a
large share of the CPU, so the HTTP throughput is a floor. CPU time per image
(of the serve process, of the clients, of the engine alone) is printed too: it
depends far less on what else the machine runs than the rates do. Only ratios
from one run compare (shared machines are noisy); the load average is printed
with each section.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
import psutil
from PIL import Image

from contracts import ModelRef
from scripts.serve_process import REPO, ServeProcess, serve_environment, synthdetect
from worker.classify.inputs import InputItem
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.imaging import ImageLimits
from worker.logs import configure_logging
from worker.settings import Settings
from worker.storage import Storage

SAMPLE = REPO / "tests" / "data" / "cifake-sample"


class Reporter(Protocol):
    def figure(self, name: str, value: float, unit: str, note: str = "") -> None: ...
    def section(self, title: str) -> None: ...
    def ratio(self, text: str, value: float, target: str | None = None) -> None: ...


def images() -> dict[str, bytes]:
    """``32px``: a CIFAKE JPEG; ``2MP``: a 1632x1224 photo-like JPEG made from it."""
    small_bytes = sorted((SAMPLE / "real").glob("*.jpg"))[0].read_bytes()
    small = Image.open(io.BytesIO(small_bytes)).convert("RGB")
    width, height = 1632, 1224
    base = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    rng = np.random.default_rng(0)
    base += rng.normal(0, 6, base.shape).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return {"32px": small_bytes, "2MP": out.getvalue()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latencies(call: Callable[[], None], count: int) -> list[float]:
    call()  # warm: first decode paths, connections
    found = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        found.append(time.perf_counter() - started)
    return found


def threaded_rate(call: Callable[[], None], clients: int, seconds: float) -> float:
    """Calls per second from ``clients`` threads calling in a loop for ``seconds``."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def loop(index: int) -> None:
        while time.monotonic() < stop:
            call()
            done[index] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    return sum(done) / (time.monotonic() - started)


def engine_alone(
    report: Reporter,
    settings: Settings,
    blobs: dict[str, bytes],
    sizes: dict[str, int],
    clients: int,
    seconds: float,
) -> None:
    """The pipeline a request runs, without HTTP, in this process."""
    from worker.inference.engine import InferenceEngine

    report.section("invoke: engine alone (in-process pipeline)")
    engine = InferenceEngine.from_settings(settings, Storage.from_settings(settings))
    limits = ImageLimits.from_settings(settings)
    config = PipelineConfig.from_settings(settings, urgent=True)
    model = ModelRef(name=settings.default_model)
    try:
        for name, blob in blobs.items():
            item = InputItem("bench", lambda blob=blob: blob, in_memory=True, size=len(blob))  # type: ignore[misc]

            def call(item: InputItem = item) -> None:
                (result,) = classify_items([item], engine, model, limits, config)
                assert result.scores is not None, result

            found = latencies(call, sizes[name])
            report.figure(f"engine_{name}_p50", percentile(found, 50) * 1e3, "ms")
            report.figure(f"engine_{name}_p99", percentile(found, 99) * 1e3, "ms")
            before = _cpu_s(psutil.Process())
            rate = threaded_rate(call, clients, seconds)
            cpu = _cpu_s(psutil.Process()) - before
            report.figure(f"engine_{name}_rate", rate, "images/s", f"{clients} threads")
            report.figure(f"engine_{name}_cpu", cpu * 1e3 / (rate * seconds), "CPU ms/image")
    finally:
        engine.close()


async def _http_rate(
    url: str, key: str, blob: bytes, clients: int, seconds: float
) -> tuple[float, int]:
    headers = {"Authorization": f"Bearer {key}", "content-type": "image/jpeg"}
    stop = time.monotonic() + seconds
    done = 0
    failed = 0
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=120
    ) as client:

        async def loop() -> None:
            nonlocal done, failed
            while time.monotonic() < stop:
                try:
                    response = await client.post("/v1/invoke", content=blob)
                except httpx.TransportError as exc:
                    failed += 1
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code == 200:
                    done += 1
                else:
                    failed += 1
                    errors.append(f"{response.status_code}: {response.text[:200]}")

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(clients)))
        for error in sorted(set(errors))[:5]:
            print(f"  failed request: {error}", flush=True)
        return done / (time.monotonic() - started), failed


def over_http(
    report: Reporter,
    workdir: Path,
    blobs: dict[str, bytes],
    sizes: dict[str, int],
    clients: int,
    seconds: float,
    extra_env: dict[str, str],
) -> None:
    """The same images through a real ``synthdetect serve`` process."""
    report.section("invoke: HTTP to `synthdetect serve`")
    env = serve_environment(workdir / "serve-data", log_level="WARNING")
    env.update(extra_env)
    key = synthdetect("apikeys", "create", "bench", env=env).strip()
    started = time.monotonic()
    served = ServeProcess.start(env, workdir / "serve.log")
    report.figure("serve_ready", time.monotonic() - started, "s", "start to /readyz 200")
    try:
        headers = {"Authorization": f"Bearer {key}", "content-type": "image/jpeg"}
        with httpx.Client(base_url=served.url, headers=headers, timeout=60) as client:
            for name, blob in blobs.items():

                def call(blob: bytes = blob) -> None:
                    response = client.post("/v1/invoke", content=blob)
                    assert response.status_code == 200, response.text

                found = latencies(call, sizes[name])
                report.figure(f"http_{name}_p50", percentile(found, 50) * 1e3, "ms")
                report.figure(f"http_{name}_p99", percentile(found, 99) * 1e3, "ms")
                server, here = psutil.Process(served.process.pid), psutil.Process()
                before = _cpu_s(server), _cpu_s(here)
                rate, failed = asyncio.run(_http_rate(served.url, key, blob, clients, seconds))
                spent = _cpu_s(server) - before[0], _cpu_s(here) - before[1]
                note = f"{clients} concurrent clients" + (f", {failed} failed" if failed else "")
                if failed:
                    print(f"serve log (last lines):\n{served.log_tail(15)}", flush=True)
                report.figure(f"http_{name}_rate", rate, "images/s", note)
                images_sent = rate * seconds
                report.figure(
                    f"http_{name}_cpu",
                    spent[0] * 1e3 / images_sent,
                    "CPU ms/image",
                    "serve process",
                )
                report.figure(
                    f"http_{name}_client_cpu",
                    spent[1] * 1e3 / images_sent,
                    "CPU ms/image",
                    "the 50 clients",
                )
            metrics = client.get("/metrics").text
            report.figure("http_mean_batch", _mean_batch(metrics), "images/batch", "whole run")
    finally:
        served.stop()


def _mean_batch(metrics: str) -> float:
    values = {}
    for line in metrics.splitlines():
        for name in ("synthdetect_batch_size_sum", "synthdetect_batch_size_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    count = values.get("synthdetect_batch_size_count", 0.0)
    return values.get("synthdetect_batch_size_sum", 0.0) / count if count else 0.0


def ratios(report: Reporter, values: dict[str, float]) -> None:
    for name in ("32px", "2MP"):
        if f"http_{name}_p50" in values and f"engine_{name}_p50" in values:
            overhead = values[f"http_{name}_p50"] - values[f"engine_{name}_p50"]
            report.figure(f"http_overhead_{name}_p50", overhead, "ms", "HTTP p50 - engine p50")
        if f"http_{name}_rate" in values and f"engine_{name}_rate" in values:
            report.ratio(
                f"http_{name}_rate / engine_{name}_rate",
                values[f"http_{name}_rate"] / values[f"engine_{name}_rate"],
            )
        if f"http_{name}_cpu" in values and f"engine_{name}_cpu" in values:
            report.ratio(
                f"http_{name}_cpu / engine_{name}_cpu (CPU per image, load-independent)",
                values[f"http_{name}_cpu"] / values[f"engine_{name}_cpu"],
            )


def run_phase(
    report: Reporter,
    values: dict[str, float],
    workdir: Path,
    quick: bool,
    clients: int = 50,
    seconds: float | None = None,
    extra_env: dict[str, str] | None = None,
) -> None:
    """The whole invoke benchmark (``scripts/bench``'s invoke phase)."""
    seconds = seconds if seconds is not None else (4.0 if quick else 10.0)
    sizes = {"32px": 100 if quick else 300, "2MP": 20 if quick else 60}
    blobs = images()
    settings = Settings()  # SYNTHDETECT_DEVICE etc. from the environment, as serve reads them
    engine_alone(report, settings, blobs, sizes, clients, seconds)
    over_http(report, workdir, blobs, sizes, clients, seconds, extra_env or {})
    ratios(report, values)


def _cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` (all its threads) so far."""
    times = process.cpu_times()
    return float(times.user + times.system)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class _Printer:
    """Prints figures as they come and keeps them for the ratios."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def figure(self, name: str, value: float, unit: str, note: str = "") -> None:
        self.values[name] = value
        print(f"{name} = {value:,.2f} {unit}" + (f"  ({note})" if note else ""), flush=True)

    def section(self, title: str) -> None:
        print(f"\n== {title}  [load {_load()}]", flush=True)

    def ratio(self, text: str, value: float, target: str | None = None) -> None:
        print(f"{text} = {value:.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts.bench_invoke",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests, 4 s per rate")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--seconds", type=float, default=None, help="time per rate (default 10)")
    parser.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the serve process (repeatable)",
    )
    args = parser.parse_args(argv)
    printer = _Printer()
    configure_logging(Settings(log_level="WARNING"))
    print(f"bench_invoke on {os.cpu_count()} cores, load {_load()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="synthdetect-bench-invoke-"))
    try:
        run_phase(
            printer,
            printer.values,
            workdir,
            args.quick,
            args.clients,
            args.seconds,
            dict(v.split("=", 1) for v in args.serve_env),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
