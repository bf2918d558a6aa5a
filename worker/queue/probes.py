"""The queue worker's liveness and readiness checks, served by ``worker.health``.

Liveness (a failure means: restart the process):

- ``consumer``: Celery's event loop ticks. A one-second timer on the loop
  stamps the time; connected but not stamped for ``LOOP_STALE_S`` means the
  loop is stuck. While the consumer reconnects to the broker the loop does
  not run, and that is no reason to restart: readiness reports the broker.
- ``batcher``: the inference batcher thread runs (once the engine exists).
- ``prober``: the background prober below runs.

Readiness (a failure means: send no work, do not count this worker):

- ``model``: the default model is loaded, verified and warmed up (a retrain
  worker loads no model at start and says so);
- ``broker``: the consumer is connected (SQS: ``GetQueueAttributes`` on a
  consumed queue also succeeds);
- ``s3``: S3 answers (HEAD of the registry's bucket; without an S3 registry,
  ``ListBuckets``, where AccessDenied still proves it reachable);
- ``registry``: the default model's alias can be read;
- ``shutdown``: the worker is not shutting down (``worker.lifecycle``).

Checks that need the network run in a background thread every
``PROBE_INTERVAL_S`` with short timeouts; the endpoints read their last
results, and a result older than ``PROBE_STALE_S`` fails as stale.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from celery import Celery, bootsteps, signals

from contracts import ModelRef
from worker.health import CheckResult, HealthChecks, serve_ops
from worker.inference.registry import ModelRegistry
from worker.lifecycle import SHUTDOWN
from worker.logs import get_logger
from worker.metrics import READY
from worker.queue.topology import QueueNames
from worker.settings import Settings
from worker.storage import Storage, parse_s3_uri

if TYPE_CHECKING:  # torch loads with the engine, after the worker is ready
    from worker.inference.engine import InferenceEngine

log = get_logger(__name__)

LOOP_TICK_S = 1.0
LOOP_STALE_S = 60.0
"""A connected consumer whose loop has not ticked this long is stuck (liveness fails)."""
PROBE_INTERVAL_S = 5.0
PROBE_STALE_S = 30.0
"""Readiness results older than this fail: the prober itself is stuck."""
PROBE_CONNECT_TIMEOUT_S = 2.0
PROBE_READ_TIMEOUT_S = 3.0
REACHABLE_CODES = {"AccessDenied", "403", "NoSuchBucket", "404", "AllAccessDisabled"}
"""S3 answers that prove the endpoint reachable although the call itself was refused."""


class ConsumerState:
    """What the consumer bootstep saw: connection up or down, the loop's last tick."""

    def __init__(self) -> None:
        self.connected = False
        self.last_tick = time.monotonic()
        self.connection: Any = None

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def liveness(self) -> CheckResult:
        if not self.connected:
            return CheckResult(True, "not connected to the broker: reconnecting (see /readyz)")
        idle = time.monotonic() - self.last_tick
        if idle > LOOP_STALE_S:
            return CheckResult(False, f"the consumer's event loop has not run for {idle:.0f} s")
        return CheckResult(True, f"event loop ran {idle:.1f} s ago")

    def broker(self) -> CheckResult:
        if not self.connected:
            return CheckResult(False, "not connected to the broker")
        connection = self.connection
        if connection is not None and not getattr(connection, "connected", True):
            return CheckResult(False, "the broker connection is closed")
        return CheckResult(True, "consumer connected")


CONSUMER = ConsumerState()


class ConsumerProbe(bootsteps.StartStopStep):
    """Consumer bootstep: tracks the broker connection and ticks on the event loop."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._tick: Any = None

    def start(self, c: Any) -> None:
        CONSUMER.connection = c.connection
        CONSUMER.connected = True
        CONSUMER.tick()
        if c.timer is not None:
            self._tick = c.timer.call_repeatedly(LOOP_TICK_S, CONSUMER.tick)

    def stop(self, c: Any) -> None:
        CONSUMER.connected = False
        if self._tick is not None and c.timer is not None:
            c.timer.cancel(self._tick)
            self._tick = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)


def install(app: Celery) -> None:
    """Add the consumer bootstep to ``app`` (before a worker is created from it)."""
    app.steps["consumer"].add(ConsumerProbe)


@dataclass(frozen=True)
class _Timed:
    result: CheckResult
    at: float


class Prober:
    """Runs the network checks in a thread; warms the default model of a classify worker."""

    def __init__(
        self,
        settings: Settings,
        engine: Callable[[], InferenceEngine] | None,
        queues: list[str],
    ) -> None:
        self.settings = settings
        self._engine_factory = engine
        self.role = "classify" if engine is not None else "retrain"
        self._engine: InferenceEngine | None = None
        self._queues = queues
        probe_settings = settings.model_copy(
            update={
                "s3_connect_timeout_s": PROBE_CONNECT_TIMEOUT_S,
                "s3_read_timeout_s": PROBE_READ_TIMEOUT_S,
            }
        )
        self._storage = Storage.from_settings(probe_settings)
        self._registry = ModelRegistry.from_settings(probe_settings, self._storage)
        self._results: dict[str, _Timed] = {}
        self._model_error: str | None = None
        self._sqs: Any = None
        self._thread = threading.Thread(target=self._loop, name="readiness-prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # --- checks read by the endpoints -------------------------------------------------

    def alive(self) -> CheckResult:
        if not self._thread.is_alive():
            return CheckResult(False, "the readiness prober thread is not running")
        return CheckResult(True, "running")

    def batcher(self) -> CheckResult:
        if self._engine is None:
            return CheckResult(True, "no inference engine yet")
        if not self._engine.alive:
            return CheckResult(False, "the inference batcher thread is not running")
        return CheckResult(True, "running")

    def model(self) -> CheckResult:
        name = self.settings.default_model
        if self._engine_factory is None:
            return CheckResult(True, "retrain worker: models load per retrain job")
        serving = self._engine.provider.serving(name) if self._engine is not None else None
        if serving is not None:
            return CheckResult(True, f"{name}@{serving.version} loaded and warmed up")
        if self._model_error:
            return CheckResult(False, f"default model {name!r} failed to load: {self._model_error}")
        return CheckResult(False, f"default model {name!r} is loading")

    def latest(self, name: str) -> CheckResult:
        timed = self._results.get(name)
        if timed is None:
            return CheckResult(False, "not probed yet")
        age = time.monotonic() - timed.at
        if age > PROBE_STALE_S:
            return CheckResult(False, f"stale: last probed {age:.0f} s ago ({timed.result.detail})")
        return timed.result

    # --- the probing thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self.probe_once()
            READY.labels(self.role).set(1.0 if self.ready() else 0.0)
            time.sleep(PROBE_INTERVAL_S)

    def ready(self) -> bool:
        return all(check().ok for check in readiness_checks(self).values())

    def probe_once(self) -> None:
        """Run every network check once and keep the results (also warms the model)."""
        for name, check in (("s3", self._probe_s3), ("registry", self._probe_registry)):
            self._results[name] = _Timed(_guarded(check), time.monotonic())
        if self.settings.broker_kind == "sqs":
            self._results["sqs"] = _Timed(_guarded(self._probe_sqs), time.monotonic())
        if self._engine_factory is not None and self.model().ok is False:
            self._warm_up()

    def _warm_up(self) -> None:
        assert self._engine_factory is not None
        try:
            engine = self._engine_factory()
            self._engine = engine
            engine.model_for(ModelRef(name=self.settings.default_model))
            self._model_error = None
        except Exception as exc:  # noqa: BLE001 - reported by /readyz, tried again next round
            self._model_error = f"{type(exc).__name__}: {exc}"
            log.warning("model_warm_up_failed", error=self._model_error)

    def _probe_s3(self) -> CheckResult:
        registry = self.settings.model_registry
        client = self._s3_client()
        try:
            if registry.startswith("s3://"):
                bucket, _ = parse_s3_uri(registry)
                client.head_bucket(Bucket=bucket)
                return CheckResult(True, f"bucket {bucket} answers")
            client.list_buckets()
            return CheckResult(True, "ListBuckets answers")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in REACHABLE_CODES:
                return CheckResult(True, f"reachable (S3 answered {code})")
            return CheckResult(False, f"S3 answered {code or 'an error'}: {exc}")
        except BotoCoreError as exc:
            return CheckResult(False, f"S3 unreachable: {exc}")

    def _s3_client(self) -> Any:
        store = self._storage.s3
        return store.client  # type: ignore[attr-defined]

    def _probe_registry(self) -> CheckResult:
        ref = ModelRef(name=self.settings.default_model)
        resolved = self._registry.resolve(ref)
        return CheckResult(True, f"alias of {ref.name!r} points at version {resolved.version}")

    def _probe_sqs(self) -> CheckResult:
        if self._sqs is None:
            self._sqs = boto3.session.Session().client(
                "sqs",
                region_name=self.settings.sqs_region,
                endpoint_url=self.settings.sqs_endpoint_url,
                config=Config(
                    connect_timeout=PROBE_CONNECT_TIMEOUT_S,
                    read_timeout=PROBE_READ_TIMEOUT_S,
                    retries={"max_attempts": 1},
                ),
            )
        name = self._queues[0]
        url = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
        self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return CheckResult(True, f"SQS answers for {name}")


def _guarded(check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - whatever failed, readiness names it
        return CheckResult(False, f"{type(exc).__name__}: {exc}")


def _shutdown() -> CheckResult:
    if SHUTDOWN.is_set():
        remaining = SHUTDOWN.remaining_s()
        return CheckResult(False, f"shutting down ({remaining or 0:.0f} s of grace left)")
    if _CELERY_SHUTTING_DOWN.is_set():
        return CheckResult(False, "shutting down")
    return CheckResult(True, "running")


def readiness_checks(prober: Prober) -> dict[str, Callable[[], CheckResult]]:
    checks: dict[str, Callable[[], CheckResult]] = {
        "shutdown": _shutdown,
        "model": prober.model,
        "broker": CONSUMER.broker,
        "s3": lambda: prober.latest("s3"),
        "registry": lambda: prober.latest("registry"),
    }
    if prober.settings.broker_kind == "sqs":
        broker = checks["broker"]

        def sqs_broker() -> CheckResult:
            consumer = broker()
            return consumer if not consumer.ok else prober.latest("sqs")

        checks["broker"] = sqs_broker
    return checks


def health_checks(prober: Prober) -> HealthChecks:
    """The worker's checks: see the module docstring."""
    return HealthChecks(
        liveness={
            "consumer": CONSUMER.liveness,
            "batcher": prober.batcher,
            "prober": prober.alive,
        },
        readiness=readiness_checks(prober),
    )


def start(
    settings: Settings,
    engine: Callable[[], InferenceEngine],
    queues: list[str],
    retrain_queue: str,
) -> Prober:
    """Start probing and serve the ops endpoint on ``settings.metrics_port``.

    A worker consuming only ``retrain_queue`` (and plain-JSON queues, which only
    forward) loads no model at start.
    """
    plain_json = set(QueueNames.from_settings(settings).plain_json_queues)
    retrain_only = set(queues) - plain_json == {retrain_queue}
    prober = Prober(settings, None if retrain_only else engine, queues)
    prober.start()
    serve_ops(settings.metrics_port, health_checks(prober))
    return prober


_CELERY_SHUTTING_DOWN = threading.Event()


@signals.worker_shutting_down.connect(weak=False)
def _on_shutting_down(**_: Any) -> None:
    """Celery began a shutdown (any signal, any path): readiness fails from now on."""
    _CELERY_SHUTTING_DOWN.set()
