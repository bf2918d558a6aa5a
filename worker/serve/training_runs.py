"""Retrains started from the console: one at a time, in a background thread, watched live.

A run is ``worker.retrain.run.run_retrain`` (the same run as ``synthdetect train``
and the retrain queue) over a dataset's labelled images, publishing into the
console's registry. Its progress lines are kept as events that any number of
watchers read from an index (``wait_events``), which the console streams as
server-sent events. When it ends, the run record gets the ``RetrainSummary``
(the gate's decision included), and two figures drawn from the held-out
predictions the run stored next to its card: the confusion matrix and the
reliability diagram (``worker.review.metrics`` and ``plots``, as in the report).

Records are rows of the console database's ``runs`` table (kind ``training``):
``params`` as started, ``progress`` the events so far (written with each one),
``result`` the summary and the names of the figures, which are PNG files under
``<root>/<run id>/``. A run that was in flight when its process stopped is
reported as failed (``interrupted``) by the next process on that host.

One run per process at a time: training takes every core the machine has, and a
second run would only make both slower (and both compete with invoke traffic).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts import Budget, ModelId, PromotionPolicy, RetrainSummary
from worker.errors import StorageError, SynthdetectError
from worker.inference.registry import ModelRegistry
from worker.logs import get_logger
from worker.serve.datasets import DatasetError, DatasetStore, model_of
from worker.serve.db import ConsoleStore, Dataset, Run
from worker.settings import Settings
from worker.storage import Storage, join_uri

log = get_logger(__name__)

MIN_PER_LABEL = 10
"""Labelled images each label needs before a run starts: 5-fold CV and a held-out share
of a handful of images give no number worth reading."""
MIN_BUDGET_S = 10.0
MAX_BUDGET_S = 6 * 3600.0
FIGURES = ("confusion.png", "reliability.png")

KIND = "training"
RunStatus = Literal["running", "succeeded", "failed"]


class RunEvent(BaseModel):
    """One progress line, ``t`` seconds after the run started."""

    t: float
    message: str


class RunRecord(BaseModel):
    """A training run as the console shows it."""

    id: str
    owner: str
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

    def params(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "budget_s": self.budget_s,
            "folds": self.folds,
            "promotion": self.promotion,
            "counts": self.counts,
            "process": _PROCESS,
        }

    @classmethod
    def from_row(cls, run: Run) -> RunRecord:
        params, result = run.params, run.result
        return cls(
            id=run.id,
            owner=run.owner,
            dataset=params["dataset"],
            model=params["model"],
            budget_s=params["budget_s"],
            folds=params["folds"],
            promotion=params["promotion"],
            counts=params.get("counts", {}),
            started_at=datetime.fromtimestamp(run.created_at, UTC),
            status=_STATUSES.get(run.status, "failed"),
            events=[RunEvent.model_validate(e) for e in run.progress.get("events", [])],
            summary=RetrainSummary.from_json_value(result["summary"])
            if result.get("summary")
            else None,
            error=run.error,
            figures=result.get("figures", []),
        )


_STATUSES: dict[str, RunStatus] = {
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
}
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"
"""Which process runs a run: a later process on the same host knows it was interrupted."""


RetrainFunction = Callable[..., RetrainSummary]


class TrainingRuns:
    """Starts runs, keeps their events, and stores their records under ``root``."""

    def __init__(
        self,
        settings: Settings,
        store: ConsoleStore,
        storage: Storage,
        registry: ModelRegistry,
        datasets: DatasetStore,
        root: str,
        retrain: RetrainFunction | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
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
        dataset_name: str,
        owner: str,
        budget_s: float,
        folds: int = 5,
        promotion: str = "if_not_worse",
        seed: int = 0,
    ) -> RunRecord:
        """Start a run on a dataset's labelled images; refuses while another one runs."""
        dataset = self.datasets.get(dataset_name)
        counts = _labelled_counts(self.datasets, dataset)
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
        if promotion not in ("if_not_worse", "always", "never"):
            raise DatasetError(f"unknown promotion policy {promotion!r}")
        policy = PromotionPolicy.model_validate({"mode": promotion})
        with self._changed:
            if self._thread is not None and self._thread.is_alive():
                raise DatasetError("a training run is in progress: wait for it to finish")
            draft = RunRecord(
                id="-",
                owner=owner,
                dataset=dataset.name,
                model=model_of(dataset),
                budget_s=budget_s,
                folds=folds,
                promotion=policy.mode,
                started_at=datetime.now(UTC),
                counts=used,
            )
            row = self.store.add_run(KIND, owner, draft.params(), status="running")
            run = draft.model_copy(
                update={"id": row.id, "started_at": datetime.fromtimestamp(row.created_at, UTC)}
            )
            self._live[run.id] = run
            self._thread = threading.Thread(
                target=self._run,
                args=(run, dataset, policy, seed),
                name=f"training-{run.id[:8]}",
                daemon=True,
            )
            self._thread.start()
        return run.model_copy(deep=True)

    def _run(self, run: RunRecord, dataset: Dataset, policy: PromotionPolicy, seed: int) -> None:
        from worker.retrain.run import RetrainRequest, run_retrain

        started = time.monotonic()

        def progress(message: str) -> None:
            self._event(run, RunEvent(t=round(time.monotonic() - started, 1), message=message))

        request = RetrainRequest(
            model=run.model,
            source=f"console dataset {dataset.name}",
            items=lambda: self.datasets.input_items(dataset, labelled=True),
            budget=Budget(seconds=run.budget_s),
            folds=run.folds,
            promotion=policy,
            seed=seed,
            job_id=f"console-{run.id}",
        )
        retrain = self._retrain or run_retrain
        progress(f"training {run.model} on {sum(run.counts.values())} labelled images")
        try:
            summary = retrain(request, self.settings, self.storage, self.registry, progress)
        except Exception as exc:
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
        row = self.store.run(run_id)
        if row is None or row.kind != KIND:
            raise DatasetError(f"there is no training run {run_id!r}")
        return RunRecord.from_row(row)

    def history(self, dataset: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Stored runs (of ``dataset``), newest first."""
        runs = []
        for row in self.store.list_runs(KIND, limit=limit):
            run = self.get(row.id)
            if dataset is None or run.dataset == dataset:
                runs.append(run)
        return runs

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
        status tells a watcher when to stop. A run of another process (a replica)
        is read from the database after at most a second's wait.
        """
        with self._changed:
            if run_id in self._live:
                self._changed.wait_for(
                    lambda: self._has_news(run_id, since), timeout=max(timeout_s, 0.0)
                )
                live = self._live[run_id]
                return list(live.events[since:]), live.status
        stored = self.get(run_id)
        if not stored.finished and len(stored.events) <= since:
            time.sleep(min(timeout_s, 1.0))
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
        live = self._live[run_id]
        return live.finished or len(live.events) > since

    def _event(self, run: RunRecord, event: RunEvent) -> None:
        with self._changed:
            run.events.append(event)
            self._changed.notify_all()
            events = [e.model_dump() for e in run.events]
        try:
            self.store.update_run(run.id, progress={"events": events})
        except Exception:
            log.warning("training_progress_not_stored", run=run.id, exc_info=True)

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
            self.store.update_run(
                run.id,
                status=status,
                progress={"events": [e.model_dump() for e in run.events]},
                result={
                    "summary": summary.model_dump(mode="json") if summary else None,
                    "figures": run.figures,
                },
                error=error,
            )
            run.status = status
            self._changed.notify_all()

    def _uri(self, run_id: str, name: str) -> str:
        return join_uri(self.root, run_id, name)

    def _mark_interrupted(self) -> None:
        """Runs of an earlier process on this host that still say running: it stopped."""
        host = _PROCESS.split(":")[0]
        for row in self.store.list_runs(KIND, limit=1000):
            process = str(row.params.get("process", ""))
            if row.status == "running" and process.split(":")[0] == host and process != _PROCESS:
                self.store.update_run(
                    row.id,
                    status="failed",
                    error="interrupted: the console stopped while this run was training",
                )


def _labelled_counts(datasets: DatasetStore, dataset: Dataset) -> dict[str, int]:
    counts = datasets.view(dataset).counts
    counts.pop("unlabelled", None)
    return counts
