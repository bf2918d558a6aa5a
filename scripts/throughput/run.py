"""``scripts/bench``: synthdetect against this machine's own limits, side by side in one run.

    scripts/bench                  # the full run (about 10 minutes on 2 cores)
    scripts/bench --quick          # every phase, small sizes (about 3 minutes)
    scripts/bench --big            # adds a 100,000-object prefix job with its peak RSS

Starts SeaweedFS on loopback, uploads CIFAKE JPEGs (as objects and as an
uncompressed tar), large photo-like JPEGs (1-4 MP) and 7000x7000 PNGs, measures
each stage alone (the limits), then runs jobs through RabbitMQ and a real
``synthdetect worker`` process, then the naive baseline, then start-up. It ends
with every figure and ratio, one per line; the invoke phase
(``scripts/bench_invoke.py``) measures ``synthdetect serve`` over HTTP next to the
engine alone. Machines are shared and noisy: only
ratios taken in one run compare; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from celery import Celery

from scripts import bench_invoke
from scripts.throughput import data, jobs, limits, startup
from scripts.throughput.services import (
    REPO,
    CallbackLog,
    WorkerProcess,
    callback_receiver,
    seaweed,
    start_worker,
    upload,
    worker_environment,
)
from tests.support.brokers import RABBITMQ_URL, delete_amqp_topology
from worker.imaging import ImageLimits
from worker.queue.producer import producer_app
from worker.settings import Settings
from worker.storage import Storage

SIZES = {
    # option: (full run, --quick)
    "objects": (20_000, 2_000),
    "bulk_images": (100_000, 10_000),
    "one_image_jobs": (200, 50),
    "large_images": (120, 24),
    "huge_images": (8, 3),
    "naive_images": (2_000, 300),
    "get_sample": (5_000, 1_000),
}


class Report:
    """Collects figures as they are measured and prints each at once (a crash keeps them)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.lines: list[str] = []

    def figure(self, name: str, value: float, unit: str, note: str = "") -> None:
        self.values[name] = value
        line = f"{name} = {value:,.{_digits(value)}f} {unit}" + (f"  ({note})" if note else "")
        self.lines.append(line)
        print(line, flush=True)

    def section(self, title: str) -> None:
        print(f"\n== {title}  [load {_load()}]", flush=True)

    def ratio(self, text: str, value: float, target: str | None = None) -> None:
        line = f"{text} = {value:.2f}"
        if target:
            op, bound = target[:2], float(target[2:])
            holds = value >= bound if op == ">=" else value <= bound
            line += f"   target {op} {bound:g}: {'holds' if holds else 'MISSED'}"
        print(line, flush=True)


def _digits(value: float) -> int:
    return 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a quick run")
    parser.add_argument(
        "--big", action="store_true", help="also a 100,000-object prefix job and its peak RSS"
    )
    for name, (full, quick) in SIZES.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"default {full:,} ({quick:,} with --quick)",
        )
    parser.add_argument(
        "--seconds", type=float, default=None, help="time per limit measurement (default 3)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (worker logs, SeaweedFS data)"
    )
    parser.add_argument(
        "--worker-root",
        type=Path,
        default=REPO,
        help="run the worker from this checkout (to compare two versions in one run)",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the worker, e.g. SYNTHDETECT_MAX_WAIT_MS=2 (repeatable)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[
            "limits",
            "objects",
            "tar",
            "large",
            "latency",
            "bulk",
            "huge",
            "naive",
            "startup",
            "invoke",
        ],
        help="leave a phase out (repeatable)",
    )
    args = parser.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.seconds is None:
        args.seconds = 1.5 if args.quick else 3.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    print(f"scripts/bench on {os.cpu_count()} cores, load {_load()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="synthdetect-bench-"))
    try:
        with seaweed(workdir / "s3") as server:
            settings = Settings(
                s3_endpoint_url=server.endpoint_url,
                broker_url=RABBITMQ_URL,
                queue_prefix=f"bench-{uuid.uuid4().hex[:8]}",
                device="cpu",
            )
            try:
                _run(args, settings, workdir, report)
            finally:
                delete_amqp_topology(settings)
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _run(args: argparse.Namespace, settings: Settings, workdir: Path, report: Report) -> None:
    storage = Storage.from_settings(settings)
    bucket = "bench"
    storage.s3.client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    base = f"s3://{bucket}"

    report.section("data")
    started = time.monotonic()
    cifake = data.cifake_images(args.objects)
    upload(settings, bucket, ((f"cifake/{name}", blob) for name, blob in cifake))
    storage.put_bytes(f"{base}/tars/cifake.tar", data.tar_bytes(cifake))
    storage.put_bytes(
        f"{base}/tars/bulk.tar", data.tar_bytes(data.repeated(cifake, args.bulk_images))
    )
    large = data.large_photos(args.large_images)
    storage.put_bytes(f"{base}/tars/large.tar", data.tar_bytes(large))
    huge = data.huge_pngs(args.huge_images) if "huge" not in args.skip else []
    upload(settings, bucket, huge)
    mb_large = sum(len(b) for _, b in large) / len(large) / 1e6
    print(
        f"{len(cifake):,} CIFAKE objects + tar, bulk tar of {args.bulk_images:,}, "
        f"{len(large)} large photos ({mb_large:.2f} MB each), {len(huge)} PNGs 7000x7000 "
        f"({len(huge[0][1]) / 1e6 if huge else 0:.1f} MB each) "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    object_uris = [f"{base}/cifake/{name}" for name, _ in cifake]
    blobs = [blob for _, blob in cifake]

    stages: Limits | None = None
    if "limits" not in args.skip:
        stages = Limits(args, settings, report, object_uris, blobs, [b for _, b in large])
        stages.all()

    env = worker_environment(
        settings, dict(v.split("=", 1) for v in args.worker_env), args.worker_root
    )
    with callback_receiver() as (callback_url, callbacks):
        _end_to_end(
            args, settings, storage, workdir, report, env, base, callback_url, callbacks, stages
        )
    if "naive" not in args.skip:
        _naive(args, settings, storage, workdir, report, env, object_uris)
    if "startup" not in args.skip:
        _startup(report, workdir, env, args.worker_root, blobs[0])
    if "invoke" not in args.skip:
        # `synthdetect serve` over HTTP next to the engine alone (scripts/bench_invoke.py).
        bench_invoke.run_phase(report, report.values, workdir, args.quick)
    _ratios(report)


class Limits:
    """The stages alone, measured in this process; ``around`` measures a phase's limits again
    just before and after it, so its ratio compares figures taken under the same load."""

    def __init__(
        self,
        args: argparse.Namespace,
        settings: Settings,
        report: Report,
        uris: list[str],
        blobs: list[bytes],
        large: list[bytes],
    ) -> None:
        self.args, self.settings, self.report = args, settings, report
        self.sample = uris[: args.get_sample]
        self.blobs, self.large = blobs, large
        self.model = limits.load_default_model()
        self.spec = self.model.card.preprocessing
        self.image_limits = ImageLimits.from_settings(settings)
        self.storage = Storage.from_settings(settings)

    def measure(self, name: str, seconds: float) -> limits.Rate:
        if name == "raw_model":
            return limits.model_rate(self.model, seconds)
        if name == "raw_decode":
            return limits.decode_rate(self.blobs, self.spec, self.image_limits, seconds)
        if name == "raw_decode_large":
            return limits.decode_rate(self.large, self.spec, self.image_limits, seconds)
        if name == "raw_get":
            return limits.obstore_get_rate(self.settings, self.sample, 16)
        if name == "raw_decode_model":
            count = min(len(self.blobs), max(1000, int(3000 * seconds)))
            return limits.plain_pipeline_rate(
                self.model, self.blobs.__getitem__, count, self.spec, self.image_limits
            )
        raise ValueError(name)

    def all(self) -> None:
        report, seconds = self.report, self.args.seconds
        report.section("limits: each stage alone")
        for name, unit in (
            ("raw_model", "images/s"),
            ("raw_decode", "images/s"),
            ("raw_decode_large", "images/s"),
        ):
            rate = self.measure(name, seconds)
            report.figure(name, rate.per_s, unit, rate.how)
        rate = limits.pillow_draft_rate(self.blobs, (32, 32), seconds)
        report.figure("raw_decode_pillow", rate.per_s, "images/s", rate.how)
        rate = limits.pillow_draft_rate(self.large, (32, 32), seconds)
        report.figure("raw_decode_large_pillow", rate.per_s, "images/s", rate.how)
        best_get = 0.0
        for name, measure in (
            ("raw_get_boto3", limits.boto3_get_rate),
            ("raw_get_obstore", limits.obstore_get_rate),
            ("raw_get_worker", limits.worker_get_rate),
        ):
            for threads in (16, 64):
                try:
                    rate = measure(self.settings, self.sample, threads)
                except ImportError as exc:
                    print(f"{name}: not measured ({exc})")
                    break
                report.figure(f"{name}_{threads}", rate.per_s, "objects/s", rate.how)
                best_get = max(best_get, rate.per_s)
        report.figure("raw_get", best_get, "objects/s", "the fastest client above")
        rate = self.measure("raw_decode_model", seconds)
        note = f"plain loop, bytes in memory, {rate.how}"
        report.figure("raw_decode_model", rate.per_s, "images/s", note)
        rate = limits.plain_pipeline_rate(
            self.model,
            lambda i: self.storage.get_bytes(self.sample[i]),
            len(self.sample),
            self.spec,
            self.image_limits,
            threads=32,
        )
        note = f"plain loop with GETs, {rate.how}"
        report.figure("raw_get_decode_model", rate.per_s, "images/s", note)

    def around(self, phase: str, names: tuple[str, ...], run: Callable[[], None]) -> None:
        """Measure ``names`` before and after ``run``; report their means as ``<name>@<phase>``."""
        seconds = min(self.args.seconds, 1.5)
        before = {name: self.measure(name, seconds).per_s for name in names}
        run()
        for name in names:
            after = self.measure(name, seconds).per_s
            mean = (before[name] + after) / 2
            note = f"before {before[name]:,.0f}, after {after:,.0f}"
            self.report.figure(f"{name}@{phase}", mean, "images/s", note)


def _end_to_end(
    args: argparse.Namespace,
    settings: Settings,
    storage: Storage,
    workdir: Path,
    report: Report,
    env: dict[str, str],
    base: str,
    callback_url: str,
    callbacks: CallbackLog,
    stages: Limits | None,
) -> None:
    report.section("synthdetect end to end: RabbitMQ, one `synthdetect worker` process")
    # A host name of its own: the machine may run other Celery workers (celery@<host>).
    command = [
        sys.executable,
        "-m",
        "worker.cli.main",
        "worker",
        f"--hostname={settings.queue_prefix}@%h",
    ]
    worker = start_worker(command, env, workdir / "worker.log", args.worker_root)
    app = producer_app(settings)
    try:
        report.figure("worker_ready", worker.ready_s, "s", "start -> worker_ready logged")
        first = jobs.one_image_latencies(
            app,
            settings,
            callbacks,
            callback_url,
            [f"{base}/cifake/{_first_key(storage, base)}"],
            f"{base}/results/first",
        )[0]
        report.figure("first_job_after_start", first, "s", "one-image job, model loaded lazily")
        report.figure("worker_rss_idle", worker.rss_mb(), "MB")
        timeout = 3600.0

        def phase(
            name: str, run: Callable[[], jobs.JobRun], note: str, paired: tuple[str, ...] = ()
        ) -> None:
            if stages is not None and paired:
                stages.around(name, paired, lambda: phase(name, run, note))
                return
            worker.reset_peak_rss()
            result = run()
            report.figure(
                f"e2e_{name}",
                result.per_s,
                "images/s",
                f"{note}, {result.images:,} images in {result.seconds:.1f} s",
            )
            report.figure(f"peak_rss_{name}", worker.peak_rss_mb(), "MB")

        if "objects" not in args.skip:
            phase(
                "objects",
                lambda: jobs.run_to_summary(
                    app,
                    settings,
                    storage,
                    jobs.prefix_inputs(f"{base}/cifake/"),
                    f"{base}/results/objects",
                    args.objects,
                    timeout,
                ),
                "prefix job, enqueue -> summary",
                ("raw_get", "raw_decode_model"),
            )
        if "tar" not in args.skip:
            phase(
                "tar",
                lambda: jobs.run_to_summary(
                    app,
                    settings,
                    storage,
                    jobs.tar_inputs(f"{base}/tars/cifake.tar"),
                    f"{base}/results/tar",
                    args.objects,
                    timeout,
                ),
                "tar job, enqueue -> summary",
                ("raw_model", "raw_decode"),
            )
        if "large" not in args.skip:
            phase(
                "large",
                lambda: jobs.run_to_summary(
                    app,
                    settings,
                    storage,
                    jobs.tar_inputs(f"{base}/tars/large.tar"),
                    f"{base}/results/large",
                    args.large_images,
                    timeout,
                ),
                "1-4 MP JPEGs in a tar, enqueue -> summary",
                ("raw_decode_large",),
            )
        uris = [f"{base}/cifake/{key}" for key in _keys(storage, base, args.one_image_jobs)]
        if "latency" not in args.skip:
            latencies = jobs.one_image_latencies(
                app, settings, callbacks, callback_url, uris, f"{base}/results/one"
            )
            _latency(report, "one_image_idle", latencies)
        if "bulk" not in args.skip:
            worker.reset_peak_rss()
            started = time.monotonic()
            accepted = len(worker.events("job_accepted"))
            bulk = jobs.submit(
                app,
                settings,
                jobs.tar_inputs(f"{base}/tars/bulk.tar"),
                f"{base}/results/bulk",
                "bulk",
            )
            _wait_busy(worker, accepted)
            latencies = jobs.one_image_latencies(
                app, settings, callbacks, callback_url, uris, f"{base}/results/under-load"
            )
            _latency(report, "one_image_under_bulk", latencies)
            result = jobs.wait_for_summary(storage, bulk, started, args.bulk_images, timeout)
            report.figure(
                "e2e_bulk",
                result.per_s,
                "images/s",
                f"tar job of {result.images:,} while the one-image jobs ran, "
                f"{result.seconds:.1f} s",
            )
            report.figure("peak_rss_bulk", worker.peak_rss_mb(), "MB")
        if "huge" not in args.skip:
            phase(
                "huge",
                lambda: jobs.run_to_summary(
                    app,
                    settings,
                    storage,
                    jobs.prefix_inputs(f"{base}/huge/"),
                    f"{base}/results/huge",
                    args.huge_images,
                    timeout,
                ),
                "7000x7000 PNGs, prefix job",
            )
        if args.big:
            count = 100_000
            cifake = data.cifake_images(count)
            print(f"uploading {count:,} objects for --big ...", flush=True)
            upload(settings, "bench", ((f"big/{name}", blob) for name, blob in cifake))
            del cifake
            phase(
                "big",
                lambda: jobs.run_to_summary(
                    app,
                    settings,
                    storage,
                    jobs.prefix_inputs(f"{base}/big/"),
                    f"{base}/results/big",
                    count,
                    timeout,
                ),
                "100,000-object prefix job",
            )
    finally:
        worker.stop()


def _first_key(storage: Storage, base: str) -> str:
    return _keys(storage, base, 1)[0]


def _keys(storage: Storage, base: str, count: int) -> list[str]:
    keys = []
    for info in storage.list_objects(f"{base}/cifake/"):
        keys.append(info.uri.split("/cifake/", 1)[1])
        if len(keys) == count:
            break
    return keys


def _wait_busy(worker: WorkerProcess, accepted: int, timeout_s: float = 60.0) -> None:
    """Return a second after the worker accepted the bulk job (its shards are then running)."""
    deadline = time.monotonic() + timeout_s
    while len(worker.events("job_accepted")) <= accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)


def _latency(report: Report, name: str, latencies: list[float]) -> None:
    for q in (50, 95, 99):
        report.figure(
            f"{name}_p{q}",
            jobs.percentile(latencies, q) * 1e3,
            "ms",
            f"{len(latencies)} jobs, enqueue -> verified callback",
        )


def _naive(
    args: argparse.Namespace,
    settings: Settings,
    storage: Storage,
    workdir: Path,
    report: Report,
    env: dict[str, str],
    uris: list[str],
) -> None:
    from scripts.throughput import naive

    report.section("naive baseline: one Celery task per image (prefork, one process per core)")
    queue = f"{settings.queue_prefix}-naive"
    naive_env = {**env, "NAIVE_QUEUE": queue, "NAIVE_S3_ENDPOINT": settings.s3_endpoint_url or ""}
    naive_env["PYTHONPATH"] = str(REPO)
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "scripts.throughput.naive",
        "worker",
        "--pool=prefork",
        f"--concurrency={limits.CORES}",
        "--loglevel=WARNING",
        "--without-mingle",
        "--without-gossip",
        "-Q",
        queue,
    ]
    process = _start_naive(command, naive_env, workdir / "naive.log")
    try:
        app = Celery("naive-producer", broker=settings.broker_url)
        app.conf.task_default_queue = queue
        count = min(args.naive_images, len(uris))
        started = time.monotonic()
        for i, uri in enumerate(uris[:count]):
            app.send_task(naive.TASK, args=[uri, f"naive-results/{i:07d}.json"], queue=queue)
        while sum(1 for _ in storage.list_objects("s3://bench/naive-results/")) < count:
            if time.monotonic() - started > 3600:
                raise TimeoutError("naive baseline did not finish")
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        report.figure("naive", count / elapsed, "images/s", f"{count:,} images in {elapsed:.1f} s")
    finally:
        process.stop()
        from kombu import Connection, Queue

        with Connection(settings.broker_url) as connection, connection.channel() as channel:
            Queue(queue).bind(channel).delete()


def _start_naive(command: list[str], env: dict[str, str], log_path: Path) -> WorkerProcess:
    import subprocess

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    time.sleep(3.0)  # prefork children start; tasks wait in the queue meanwhile anyway
    return WorkerProcess(process, log_path, time.monotonic())


def _startup(report: Report, workdir: Path, env: dict[str, str], root: Path, image: bytes) -> None:
    report.section("start-up")
    path = workdir / "one.jpg"
    path.write_bytes(image)
    wall = startup.classify_wall_s(path, root, env)
    report.figure("classify_one_image", wall, "s", "`synthdetect classify one.jpg`, median of 3")
    for module in ("worker.cli.classify", "worker.queue.tasks"):
        costs = startup.import_costs(module, root, env)
        listed = ", ".join(f"{name} {ms:.0f} ms" for name, ms in costs[1:])
        print(f"import {module}: {costs[0][1]:.0f} ms in all; {listed}", flush=True)


def _ratios(report: Report) -> None:
    v = report.values
    print(f"\n== ratios (one run, same data)  [load {_load()}]", flush=True)

    def limit(name: str, phase: str) -> float | None:
        """The limit measured around the phase, else the one from the limits section."""
        return v.get(f"{name}@{phase}", v.get(name))

    def ratio(text: str, phase: str, names: tuple[str, ...], target: str | None) -> None:
        found = [limit(name, phase) for name in names]
        if f"e2e_{phase}" in v and all(found):
            report.ratio(text, v[f"e2e_{phase}"] / min(x for x in found if x), target)

    ratio("e2e_objects / min(raw_get, raw_decode_model)", "objects",
          ("raw_get", "raw_decode_model"), ">=0.8")  # fmt: skip
    ratio("e2e_tar / min(raw_decode, raw_model)", "tar", ("raw_decode", "raw_model"), ">=0.8")
    ratio("e2e_tar / raw_decode_model (the plain loop)", "tar", ("raw_decode_model",), None)
    ratio("e2e_large / raw_decode_large", "large", ("raw_decode_large",), ">=0.8")
    if "e2e_objects" in v and "naive" in v:
        report.ratio("e2e_objects / naive", v["e2e_objects"] / v["naive"], ">=10")
    for name, bound in (
        ("one_image_idle_p50", 30),
        ("one_image_idle_p99", 100),
        ("one_image_under_bulk_p99", 250),
    ):
        if name in v:
            report.ratio(f"{name} / {bound} ms", v[name] / bound, "<=1")
    for name in ("peak_rss_bulk", "peak_rss_huge", "peak_rss_big"):
        if name in v:
            report.ratio(f"{name} / 1536 MB", v[name] / 1536, "<=1")
    if "classify_one_image" in v:
        report.ratio("classify_one_image / 2 s", v["classify_one_image"] / 2, "<=1")
    if "worker_ready" in v:
        report.ratio("worker_ready / 3 s", v["worker_ready"] / 3, "<=1")


if __name__ == "__main__":
    raise SystemExit(main())
