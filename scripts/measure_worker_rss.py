"""Resident memory of real worker processes, idle and under load: the figures behind the
Kubernetes resource requests in deploy/k8s (docs/operations.md, "Memory per worker").

    python scripts/measure_worker_rss.py                    # classify worker, then a retrain worker
    python scripts/measure_worker_rss.py --jobs 24 --retrain-seconds 0   # classify only

Starts a private SeaweedFS, uses the machine's RabbitMQ (127.0.0.1:5672, a queue
prefix of its own), uploads the 400 committed CIFAKE sample images, and then:

1. starts ``synthdetect worker`` with the settings deploy/k8s/base/settings.env
   gives a pod (threads, batch size, concurrency), waits for /readyz, reads RSS;
2. submits ``--jobs`` jobs of 400 images at once (the sample under new keys, so
   every job fetches and decodes) and samples RSS every 0.2 s until all
   summaries exist; reports the peak (VmHWM, the kernel's high-water mark) and
   the images/s of the run;
3. with ``--retrain-seconds`` > 0, starts ``synthdetect worker -Q <prefix>-retrain``
   and runs one retrain job on the sample with that time budget, sampling the same.

RSS is read from /proc/<pid>/status (Linux). Numbers depend on the machine's core
count through thread pools; the settings file pins them as a pod would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contracts import ClassifyJob, RetrainJob  # noqa: E402
from scripts.dev_s3 import (  # noqa: E402
    DEV_ACCESS_KEY_ID,
    DEV_REGION,
    DEV_SECRET_ACCESS_KEY,
    SeaweedPorts,
    SeaweedServer,
)
from worker.queue.producer import (  # noqa: E402
    producer_app,
    submit_job,
    submit_retrain_job,
    wait_for_retrain_summary,
    wait_for_summary,
)
from worker.settings import Settings  # noqa: E402
from worker.storage import S3Store, Storage  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "cifake-sample"
POD_SETTINGS = REPO / "deploy" / "k8s" / "base" / "settings.env"
BIN = Path(sys.executable).parent


def pod_settings() -> dict[str, str]:
    """SYNTHDETECT_* lines of the ConfigMap's env file that shape memory (not endpoints)."""
    keep = {
        "TORCH_THREADS",
        "DECODE_THREADS",
        "MAX_BATCH",
        "WORKER_CONCURRENCY",
        "FETCH_CONCURRENCY",
    }
    values = {}
    for line in POD_SETTINGS.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.removeprefix("SYNTHDETECT_") in keep:
            values[name] = value
    return values


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


class Sampler:
    """Samples VmRSS every 0.2 s in a thread; keeps the largest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, rss_kib(self.pid)[0])
            except (FileNotFoundError, KeyError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def start_worker(
    args: list[str], env: dict[str, str], log: Path, port: int
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(BIN / "synthdetect"), "worker", *args],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"worker exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"worker not ready:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24, help="400-image jobs submitted at once")
    parser.add_argument("--retrain-seconds", type=float, default=120, help="0 = no retrain run")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rss-"))
    server = SeaweedServer.start(tmp / "s3", SeaweedPorts.free())
    prefix = f"rss-{uuid.uuid4().hex[:8]}"
    port = 19100 + os.getpid() % 500
    env = dict(os.environ)
    env.update(pod_settings())
    env.update(
        {
            "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": DEV_REGION,
            "SYNTHDETECT_S3_ENDPOINT_URL": server.endpoint_url,
            "SYNTHDETECT_QUEUE_PREFIX": prefix,
            "SYNTHDETECT_METRICS_PORT": str(port),
            "SYNTHDETECT_MODEL_REGISTRY": f"s3://{prefix}/models",
            "SYNTHDETECT_DEVICE": "cpu",
            "SYNTHDETECT_LOG_FORMAT": "json",
        }
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    settings = Settings(
        s3_endpoint_url=server.endpoint_url,
        queue_prefix=prefix,
        model_registry=f"s3://{prefix}/models",
    )
    print(f"pod settings: {json.dumps(pod_settings())}")
    try:
        client = S3Store.from_settings(settings).client
        client.create_bucket(Bucket=prefix)
        files = sorted(SAMPLE.glob("*/*.jpg"))
        keys = [(f"jobs/{j}/{p.parent.name}/{p.name}", p) for j in range(args.jobs) for p in files]
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda kp: client.put_object(Bucket=prefix, Key=kp[0], Body=kp[1].read_bytes()),
                    keys + [(f"train/{p.parent.name}/{p.name}", p) for p in files],
                )
            )
        storage = Storage.from_settings(settings)
        app = producer_app(settings)

        worker = start_worker([f"--hostname={prefix}@%h"], env, tmp / "classify.log", port)
        time.sleep(3)
        idle, _ = rss_kib(worker.pid)
        print(f"classify worker ready: RSS {mib(idle)}")
        sampler = Sampler(worker.pid)
        jobs = [
            ClassifyJob.model_validate(
                {
                    "job_id": f"{prefix}-{j}",
                    "inputs": {"kind": "prefix", "prefix": f"s3://{prefix}/jobs/{j}/"},
                    "output": {"uri": f"s3://{prefix}/results"},
                    "priority": "bulk" if j % 2 else "interactive",
                }
            )
            for j in range(args.jobs)
        ]
        started = time.monotonic()
        for job in jobs:
            submit_job(job, settings, app)
        for job in jobs:
            if wait_for_summary(job, storage, timeout_s=900) is None:
                raise SystemExit(f"no summary for {job.job_id}")
        elapsed = time.monotonic() - started
        peak = sampler.stop()
        rss, hwm = rss_kib(worker.pid)
        images = args.jobs * len(files)
        print(
            f"classify worker under load: {images} images in {elapsed:.1f} s "
            f"({images / elapsed:.0f} images/s); sampled peak RSS {mib(peak)}, "
            f"VmHWM {mib(hwm)}, RSS after {mib(rss)}"
        )
        stop(worker)

        if args.retrain_seconds > 0:
            retrain_port = port + 1
            env["SYNTHDETECT_METRICS_PORT"] = str(retrain_port)
            retrain = start_worker(
                ["-Q", f"{prefix}-retrain", f"--hostname=retrain-{prefix}@%h"],
                env,
                tmp / "retrain.log",
                retrain_port,
            )
            idle, _ = rss_kib(retrain.pid)
            print(f"retrain worker ready: RSS {mib(idle)}")
            sampler = Sampler(retrain.pid)
            retrain_job = RetrainJob.model_validate(
                {
                    "job_id": f"{prefix}-retrain",
                    "dataset": {"kind": "prefix", "prefix": f"s3://{prefix}/train/"},
                    "budget": {"seconds": args.retrain_seconds},
                    "cv_folds": 3,
                }
            )
            started = time.monotonic()
            submit_retrain_job(retrain_job, settings, app)
            summary = wait_for_retrain_summary(
                retrain_job,
                settings.model_registry,
                storage,
                timeout_s=args.retrain_seconds * 4 + 600,
            )
            if summary is None:
                raise SystemExit(
                    f"no retrain summary:\n{(tmp / 'retrain.log').read_text()[-3000:]}"
                )
            peak = sampler.stop()
            _, hwm = rss_kib(retrain.pid)
            print(
                f"retrain worker, {len(files)}-image retrain with a {args.retrain_seconds:.0f} s "
                f"budget ({summary.status}, {time.monotonic() - started:.0f} s): "
                f"sampled peak RSS {mib(peak)}, VmHWM {mib(hwm)}"
            )
            stop(retrain)
    finally:
        server.stop(grace_s=3.0)


if __name__ == "__main__":
    main()
