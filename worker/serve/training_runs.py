"""Retrains started from the console: one at a time, in a background thread, watched live.

A run is ``worker.retrain.run.run_retrain`` (the same run as ``synthdetect train``
and the retrain queue) over a dataset's labelled images, publishing into the
console's registry. Its progress lines are kept as events that any number of
watchers read from an index (``wait_events``), which the console streams as
server-sent events. When it ends, the run record gets the ``RetrainSummary``
(the gate's decision included), and two figures drawn from the held-out
predictions the run stored next to its card: the confusion matrix and the
reliability diagram (``worker.review.metrics`` and ``plots``, as in the report).

Records are JSON under ``<root>/<run id>/run.json``, written when a run starts and
when it ends, so finished runs outlive the process. A run that was in flight when
the process stopped is reported as failed (``interrupted``) by the next one.

One run at a time: training takes every core this machine has, and a second run
would only make both slower (and both compete with invoke traffic).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from contracts import Budget, ModelId, PromotionPolicy, RetrainSummary
from worker.errors import ObjectNotFound, StorageError, SynthdetectError
from worker.inference.registry import ModelRegistry
from worker.logs import get_logger
from worker.serve.datasets import DatasetError, DatasetRecord, DatasetStore
from worker.settings import Settings
from worker.storage import Storage, join_uri

log = get_logger(__name__)

MIN_PER_LABEL = 10
"""Labelled images each label needs before a run starts: 5-fold CV and a held-out share
of a handful of images give no number worth reading."""
MIN_BUDGET_S = 10.0
MAX_BUDGET_S = 6 * 3600.0
FIGURES = ("confusion.png", "reliability.png")

RunStatus = Literal["running", "succeeded", "failed"]


class RunEvent(BaseModel):
    """One progress line, ``t`` seconds after the run started."""

    t: float
    message: str


class RunRecord(BaseModel):
    """A training run as the console shows it."""

    id: str
    dataset: str
    model: str
    budget_s: float
    folds: int
    promotion: str
    started_at: datetime
    status: RunStatus = "running"
    events: list[RunEvent] = Field(default_factory=list)
    summary: RetrainSummary | None = None
    error: str | None = None
    figures: list[str] = Field(default_factory=list)
    """Names of the figures stored beside the record (see ``FIGURES``)."""
    counts: dict[str, int] = Field(default_factory=dict)
    """Labelled images per label when the run started."""

    @property
    def finished(self) -> bool:
        return self.status != "running"


RetrainFunction = Callable[..., RetrainSummary]


class TrainingRuns:
    """Starts runs, keeps their events, and stores their records under ``root``."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        registry: ModelRegistry,
        datasets: DatasetStore,
        root: str,
        retrain: RetrainFunction | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.registry = registry
        self.datasets = datasets
        self.root = root.rstrip("/")
        self._retrain = retrain
        self._live: dict[str, RunRecord] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._mark_interrupted()

    # --- starting --------------------------------------------------------------------

    def start(
        self,
        dataset: str,
        budget_s: float,
        folds: int = 5,
        promotion: str = "if_not_worse",
        seed: int = 0,
    ) -> RunRecord:
        """Start a run on ``dataset``'s labelled images; refuses while another one runs."""
        record = self.datasets.get(dataset)
        counts = _labelled_counts(record)
        used = {label: n for label, n in counts.items() if n}
        short = [f"{label} has {n}" for label, n in used.items() if n < MIN_PER_LABEL]
        if len(used) < 2:
            raise DatasetError("label images of at least two labels first")
        if short:
            raise DatasetError(
                f"label at least {MIN_PER_LABEL} images of each label first ({', '.join(short)})"
            )
        if not MIN_BUDGET_S <= budget_s <= MAX_BUDGET_S:
            raise DatasetError(f"the budget must be {MIN_BUDGET_S:.0f} s to {MAX_BUDGET_S:.0f} s")
        if not 2 <= folds <= 10:
            raise DatasetError("folds must be 2 to 10")
        policy = PromotionPolicy.model_validate({"mode": promotion})
        with self._changed:
            if self._thread is not None and self._thread.is_alive():
                raise DatasetError("a training run is in progress: wait for it to finish")
            run = RunRecord(
                id=datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
                dataset=dataset,
                model=record.model,
                budget_s=budget_s,
                folds=folds,
                promotion=policy.mode,
                started_at=datetime.now(UTC),
                counts=counts,
            )
            self._live[run.id] = run
            self._save(run)
            self._thread = threading.Thread(
                target=self._run,
                args=(run, record, policy, seed),
                name=f"training-{run.id}",
                daemon=True,
            )
            self._thread.start()
        return run

    def _run(
        self, run: RunRecord, record: DatasetRecord, policy: PromotionPolicy, seed: int
    ) -> None:
        from worker.retrain.run import RetrainRequest, run_retrain

        started = time.monotonic()

        def progress(message: str) -> None:
            self._event(run, RunEvent(t=round(time.monotonic() - started, 1), message=message))

        request = RetrainRequest(
            model=record.model,
            source=f"console dataset {record.name}",
            items=lambda: self.datasets.input_items(record, labelled=True),
            budget=Budget(seconds=run.budget_s),
            folds=run.folds,
            promotion=policy,
            seed=seed,
            job_id=f"console-{run.id}",
        )
        retrain = self._retrain or run_retrain
        progress(f"training {record.model} on {sum(run.counts.values())} labelled images")
        try:
            summary = retrain(request, self.settings, self.storage, self.registry, progress)
        except Exception as exc:  # noqa: BLE001 - whatever stops a run is that run's result
            log.exception("console_training_failed", run=run.id)
            self._finish(run, "failed", error=str(exc))
            return
        figures = self._figures(run, summary.model)
        self._finish(run, "succeeded", summary=summary, figures=figures)

    def _figures(self, run: RunRecord, model: ModelId | None) -> list[str]:
        """Confusion matrix and reliability diagram of the held-out predictions, if stored."""
        if model is None:
            return []
        from worker.retrain.run import HELDOUT_NAME
        from worker.review.metrics import review_metrics
        from worker.review.plots import confusion_matrix_png, reliability_png
        from worker.review.views import load_results

        base = self.registry.version_uri(self.registry.primary_root, model)
        try:
            results = load_results([join_uri(base, HELDOUT_NAME)], self.storage)
        except (SynthdetectError, ValueError) as exc:
            self._event(run, RunEvent(t=0, message=f"no held-out figures: {exc}"))
            return []
        metrics = review_metrics(results)
        drawn = [("confusion.png", confusion_matrix_png(metrics.confusion, metrics.axis))]
        if metrics.reliability is not None:
            drawn.append(("reliability.png", reliability_png(metrics.reliability)))
        for name, png in drawn:
            self.storage.put_bytes(self._uri(run.id, name), png, content_type="image/png")
        return [name for name, _ in drawn]

    # --- watching --------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord:
        """A run, live or stored; ``DatasetError`` if unknown."""
        with self._changed:
            live = self._live.get(run_id)
            if live is not None:
                return live.model_copy(deep=True)
        if not _RUN_ID_CHARS.issuperset(run_id):
            raise DatasetError(f"there is no training run {run_id!r}")
        try:
            return RunRecord.model_validate_json(self.storage.get_bytes(self._uri(run_id)))
        except (ObjectNotFound, ValidationError) as exc:
            raise DatasetError(f"there is no training run {run_id!r}") from exc

    def list(self, dataset: str | None = None) -> list[RunRecord]:
        """Every stored run (of ``dataset``), newest first."""
        runs: list[RunRecord] = []
        prefix = self.root + "/"
        for info in self.storage.list_objects(prefix):
            if info.uri.endswith("/run.json"):
                run_id = info.uri[len(prefix) :].split("/")[0]
                try:
                    run = self.get(run_id)
                except DatasetError:
                    continue
                if dataset is None or run.dataset == dataset:
                    runs.append(run)
        return sorted(runs, key=lambda r: r.started_at, reverse=True)

    def running(self) -> RunRecord | None:
        """The run in progress, if any."""
        with self._changed:
            for run in self._live.values():
                if not run.finished:
                    return run.model_copy(deep=True)
        return None

    def wait_events(
        self, run_id: str, since: int, timeout_s: float
    ) -> tuple[list[RunEvent], RunStatus]:
        """Events from index ``since`` on, waiting up to ``timeout_s`` for the first new one.

        Returns at once when there are new events or the run has finished; the
        status tells a watcher when to stop.
        """
        with self._changed:
            self._changed.wait_for(
                lambda: self._has_news(run_id, since), timeout=max(timeout_s, 0.0)
            )
            live = self._live.get(run_id)
            if live is not None:
                return list(live.events[since:]), live.status
        stored = self.get(run_id)
        return stored.events[since:], stored.status

    def figure(self, run_id: str, name: str) -> bytes:
        """A stored figure's PNG bytes."""
        if name not in FIGURES:
            raise DatasetError(f"no figure {name!r}")
        run = self.get(run_id)
        try:
            return self.storage.get_bytes(self._uri(run.id, name))
        except StorageError as exc:
            raise DatasetError(f"run {run_id} has no {name}") from exc

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the current run's thread (tests and shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    # --- internals -------------------------------------------------------------------

    def _has_news(self, run_id: str, since: int) -> bool:
        live = self._live.get(run_id)
        return live is None or live.finished or len(live.events) > since

    def _event(self, run: RunRecord, event: RunEvent) -> None:
        with self._changed:
            run.events.append(event)
            self._changed.notify_all()

    def _finish(
        self,
        run: RunRecord,
        status: RunStatus,
        summary: RetrainSummary | None = None,
        error: str | None = None,
        figures: list[str] | None = None,
    ) -> None:
        with self._changed:
            run.summary = summary
            run.error = error
            run.figures = figures or []
            if error is not None:
                run.events.append(RunEvent(t=run.events[-1].t if run.events else 0, message=error))
            run.status = status
            self._save(run)
            self._changed.notify_all()

    def _save(self, run: RunRecord) -> None:
        self.storage.put_bytes(
            self._uri(run.id), run.model_dump_json(indent=1).encode(), "application/json"
        )

    def _uri(self, run_id: str, name: str = "run.json") -> str:
        return join_uri(self.root, run_id, name)

    def _mark_interrupted(self) -> None:
        """Runs stored as running belonged to a process that stopped: say so."""
        for run in self.list():
            if run.status == "running":
                run.status = "failed"
                run.error = "interrupted: the console stopped while this run was training"
                self._save(run)


_RUN_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz-")


def _labelled_counts(record: DatasetRecord) -> dict[str, int]:
    counts = {label: 0 for label in record.labels}
    for item in record.items:
        if item.label is not None:
            counts[item.label] = counts.get(item.label, 0) + 1
    return counts
