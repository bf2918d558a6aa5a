"""TrainingRuns: one run at a time, live events, figures from held-out predictions, records.

The retrain function is the seam: these tests pass one that publishes the tiny model
with held-out predictions (what ``run_retrain`` stores) in a fraction of a second.
The real ``run_retrain`` runs in the console's browser test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from contracts import ImageResult, ModelId, RetrainSummary
from tests.support.memory_store import MemoryStore
from tests.support.tiny_model import tiny_model
from tests.support.toy_images import png_bytes
from worker.imaging import ImageLimits
from worker.inference.registry import ModelRegistry
from worker.retrain.run import HELDOUT_NAME, RetrainRequest, write_heldout_predictions
from worker.serve import training_runs
from worker.serve.datasets import DatasetError, DatasetStore, LabelRule, UploadedFile
from worker.serve.db import SqliteStore
from worker.serve.training_runs import TrainingRuns
from worker.settings import Settings
from worker.storage import Storage, join_uri

LIMITS = ImageLimits.from_settings(Settings())


class FakeRetrain:
    """Publishes the tiny model and held-out predictions; waits for ``release`` first."""

    def __init__(self, fail: bool = False) -> None:
        self.release = threading.Event()
        self.requests: list[RetrainRequest] = []
        self.fail = fail

    def __call__(
        self,
        request: RetrainRequest,
        settings: Settings,
        storage: Storage,
        registry: ModelRegistry,
        on_progress: Callable[[str], None],
    ) -> RetrainSummary:
        self.requests.append(request)
        on_progress(f"loaded {len(list(request.items()))} images")
        assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("the search found nothing")
        card, data = tiny_model(request.model, registry.next_version(request.model))
        registry.publish(card, data)
        model = ModelId(name=card.name, version=card.version)
        rows = [
            ImageResult(
                uri=f"x{i}",
                label=["real", "synthetic"][i % 2],
                confidence=0.8,
                scores={"real": 0.8, "synthetic": 0.2}
                if i % 2 == 0
                else {"real": 0.2, "synthetic": 0.8},
                true_label=["real", "synthetic"][(i // 3) % 2],
                model=model,
            )
            for i in range(12)
        ]
        base = registry.version_uri(registry.primary_root, model)
        write_heldout_predictions(rows, storage, join_uri(base, HELDOUT_NAME))
        on_progress("published")
        return RetrainSummary(
            job_id=request.job_id,
            status="succeeded",
            model=model,
            promoted=False,
            decision="kept as a candidate: the promotion policy is 'never'",
            heldout_accuracy=0.5,
            duration_s=0.1,
        )


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Storage, ModelRegistry, DatasetStore]:
    storage = Storage(MemoryStore)
    registry = ModelRegistry(storage, [str(tmp_path / "models")])
    records = SqliteStore(tmp_path / "console.db")
    records.create_schema()
    datasets = DatasetStore(records, storage, str(tmp_path / "datasets"), LIMITS)
    datasets.create("d", "ann", model="tiny")
    rng = np.random.default_rng(0)
    files = [
        UploadedFile(
            f"{['real', 'synthetic'][i % 2]}/{i}.png",
            png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        )
        for i in range(24)
    ]
    datasets.add_files("d", files, LabelRule(from_folders=True), "ann")
    unlabelled = UploadedFile("u.png", png_bytes(np.zeros((8, 8, 3), np.uint8)))
    datasets.add_files("d", [unlabelled], LabelRule(), "ann")
    return storage, registry, datasets


def runs_for(
    parts: tuple[Storage, ModelRegistry, DatasetStore], tmp_path: Path, retrain: FakeRetrain
) -> TrainingRuns:
    storage, registry, datasets = parts
    return TrainingRuns(
        Settings(), datasets.store, storage, registry, datasets, str(tmp_path / "runs"), retrain
    )


def test_a_run_streams_events_then_stores_summary_and_figures(
    parts: tuple[Storage, ModelRegistry, DatasetStore], tmp_path: Path
) -> None:
    retrain = FakeRetrain()
    runs = runs_for(parts, tmp_path, retrain)
    run = runs.start("d", "ann", budget_s=30, promotion="never")
    events, status = runs.wait_events(run.id, 0, timeout_s=10)
    assert status == "running"
    while len(events) < 2:
        more, _ = runs.wait_events(run.id, len(events), timeout_s=10)
        assert more, "no progress event within 10 s"
        events += more
    assert events[0].message.startswith("training tiny on 24 labelled images")
    assert events[1].message == "loaded 24 images"  # the unlabelled image is not trained on
    with pytest.raises(DatasetError, match="in progress"):
        runs.start("d", "ann", budget_s=30)
    retrain.release.set()
    runs.join(10)

    done = runs.get(run.id)
    assert done.status == "succeeded"
    assert done.summary is not None
    assert done.summary.model == ModelId(name="tiny", version="1")
    assert done.figures == ["confusion.png", "reliability.png"]
    assert runs.figure(run.id, "confusion.png").startswith(b"\x89PNG")
    request = retrain.requests[0]
    assert (request.model, request.budget.seconds, request.promotion.mode) == ("tiny", 30, "never")
    # a new process reads the same record
    again = runs_for(parts, tmp_path, FakeRetrain())
    assert [r.id for r in again.history("d")] == [run.id]
    assert again.get(run.id).summary == done.summary


def test_a_failed_run_says_why(
    parts: tuple[Storage, ModelRegistry, DatasetStore], tmp_path: Path
) -> None:
    retrain = FakeRetrain(fail=True)
    retrain.release.set()
    runs = runs_for(parts, tmp_path, retrain)
    run = runs.start("d", "ann", budget_s=30)
    runs.join(10)
    events, status = runs.wait_events(run.id, 0, timeout_s=1)
    assert status == "failed"
    assert runs.get(run.id).error == "the search found nothing"
    assert events[-1].message == "the search found nothing"


def test_runs_are_refused_without_enough_labels_or_with_a_bad_budget(
    parts: tuple[Storage, ModelRegistry, DatasetStore], tmp_path: Path
) -> None:
    _, _, datasets = parts
    runs = runs_for(parts, tmp_path, FakeRetrain())
    with pytest.raises(DatasetError, match="budget"):
        runs.start("d", "ann", budget_s=1)
    datasets.create("small", "ann")
    datasets.add_files(
        "small",
        [UploadedFile("real/a.png", png_bytes(np.zeros((8, 8, 3), np.uint8)))],
        LabelRule(from_folders=True),
        "ann",
    )
    with pytest.raises(DatasetError, match="at least two labels"):
        runs.start("small", "ann", budget_s=30)
    with pytest.raises(DatasetError, match="no dataset"):
        runs.start("missing", "ann", budget_s=30)


def test_a_run_left_running_by_a_stopped_process_is_marked_interrupted(
    parts: tuple[Storage, ModelRegistry, DatasetStore],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    retrain = FakeRetrain()
    runs = runs_for(parts, tmp_path, retrain)
    run = runs.start("d", "ann", budget_s=30)
    monkeypatch.setattr(
        "worker.serve.training_runs._PROCESS", training_runs._PROCESS.split(":")[0] + ":1"
    )
    later = runs_for(parts, tmp_path, FakeRetrain())  # as if the process had restarted
    assert later.get(run.id).status == "failed"
    assert "interrupted" in (later.get(run.id).error or "")
    retrain.release.set()
    runs.join(10)
