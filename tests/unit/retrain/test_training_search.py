"""The budgeted search and one whole ``run_retrain``: from a folder of labelled PNGs to a
published, calibrated, gated model version.

The search space is replaced by one-stage SynthNets trained for a few epochs, and the
speed probe by a fixed speed, so the whole retrain takes a couple of seconds.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts import Budget, ImageResult, ModelId, ModelRef, PromotionPolicy
from tests.support.toy_images import bright_and_dark, png_bytes
from worker.classify.inputs import InputItem, expand_paths
from worker.inference.model import load_model
from worker.inference.registry import ModelRegistry
from worker.retrain.run import HELDOUT_NAME, RetrainRequest, run_retrain
from worker.retrain.training import candidates, search
from worker.retrain.training.candidates import Candidate
from worker.retrain.training.dataset import LabelledImages
from worker.retrain.training.loop import TrainConfig
from worker.retrain.training.nets import SynthNetSpec
from worker.settings import Settings
from worker.storage import Storage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
TINY = SynthNetSpec(widths=(16,), blocks=(1,))
LABELS = ["real", "synthetic"]
SCORING_PER_SECOND = 4000.0
IMAGES_PER_SECOND = 1000.0


def tiny_candidate(lr: float = 1e-2, seed: int = 0) -> Candidate:
    return Candidate("synthnet", TrainConfig(batch_size=8, lr=lr, bf16=False, seed=seed), TINY)


@pytest.fixture
def tiny_search(monkeypatch: pytest.MonkeyPatch) -> list[Candidate]:
    """A search space of two tiny candidates, 5 epochs each, and no speed probing."""
    space = [tiny_candidate(), tiny_candidate(lr=3e-3)]
    monkeypatch.setattr(search, "search_space", lambda seed=0, n_train=0: space)
    monkeypatch.setitem(search.DEFAULT_EPOCHS, "synthnet", 5.0)
    monkeypatch.setattr(candidates, "training_speed", lambda *args: IMAGES_PER_SECOND)
    monkeypatch.setattr(candidates, "scoring_speed", lambda *args: SCORING_PER_SECOND)
    return space


# --- the search ----------------------------------------------------------------------


def plan(candidate: Candidate, epochs: float, n_train: int = 1000) -> float | None:
    """plan_epochs for the unit of time in which ``candidate`` trains ``epochs`` epochs."""
    return search.plan_epochs(candidate, epochs * n_train / IMAGES_PER_SECOND, n_train)


@pytest.mark.parametrize("family", ["synthnet", "lite0"])
def test_plan_epochs_drops_caps_and_passes_through(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(candidates, "training_speed", lambda *args: IMAGES_PER_SECOND)
    candidate = Candidate(family, TrainConfig(), TINY if family == "synthnet" else None)
    low, high = search.MIN_EPOCHS[family], search.MAX_EPOCHS[family]
    assert plan(candidate, low * 0.9) is None
    assert plan(candidate, low) == pytest.approx(low)
    assert plan(candidate, (low + high) / 2) == pytest.approx((low + high) / 2)
    assert plan(candidate, high * 10) == high


def test_plan_epochs_without_a_time_limit_uses_the_default_and_probes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_probe(*args: object) -> float:
        raise AssertionError("a trials-only plan must not probe training speed")

    monkeypatch.setattr(candidates, "training_speed", no_probe)
    candidate = tiny_candidate()
    assert search.plan_epochs(candidate, None, 1000) == search.DEFAULT_EPOCHS["synthnet"]


def toy_set(n: int, size: int = 8) -> LabelledImages:
    images, labels = bright_and_dark(n, size)
    return LabelledImages(images, labels, LABELS, [f"s3://d/{i}.png" for i in range(n)])


def test_search_by_trials_cross_validates_the_screened_candidate(
    tiny_search: list[Candidate],
) -> None:
    data = toy_set(24)
    messages: list[str] = []
    budget = Budget(seconds=None, trials=1)
    outcome = search.search(data, budget, 2, 0, deadline=None, on_progress=messages.append)
    assert outcome.unit_s is None
    assert outcome.screened == [tiny_search[0].describe()]  # trials=1: the first only
    assert outcome.winner == tiny_search[0].with_epochs(5.0, seed=0)
    assert [t.candidate for t in outcome.trials] == [outcome.winner]
    cv = outcome.cv
    assert cv.complete
    assert [r.index for r in cv.results] == [0, 1]
    validated = np.concatenate([r.validation for r in cv.results])
    assert sorted(validated) == list(range(24))
    oof = cv.oof_logits(24, 2)
    assert not np.isnan(oof).any()
    assert cv.mean_accuracy(data.labels) > 0.9
    assert outcome.trials[0].fold0_accuracy == cv.results[0].accuracy(data.labels)
    assert any(m.startswith("screen 1/1") for m in messages)
    assert any(m.startswith("cv fold 2/2") for m in messages)


def test_a_search_short_of_time_still_trains_the_fastest_candidate_one_epoch(
    tiny_search: list[Candidate], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(candidates, "training_speed", lambda *args: 1.0)  # one image a second
    deadline = time.monotonic() + 30
    outcome = search.search(
        toy_set(24), Budget(seconds=30, trials=1), folds=2, seed=0, deadline=deadline
    )
    assert outcome.unit_s == pytest.approx(30 / 2, rel=0.05)  # 1/2 screen + 1/2 fold + 1 fit
    assert outcome.winner.config.epochs == 1.0
    assert outcome.cv.complete


@pytest.mark.parametrize(
    ("trials", "n_train", "expected"),
    [(None, 1600, 1), (None, 30000, search.DEFAULT_SCREENED), (2, 1600, 2), (9, 1600, 6)],
)
def test_small_data_screens_one_candidate_unless_trials_are_asked_for(
    trials: int | None, n_train: int, expected: int
) -> None:
    budget = Budget(seconds=300, trials=trials)
    assert search.screened_count(budget, 5, n_train, space_size=6) == expected


def test_pace_gives_a_run_fewer_epochs_when_its_planned_ones_no_longer_fit(
    tiny_search: list[Candidate],
) -> None:
    candidate = tiny_candidate().with_epochs(10.0, seed=0)
    pace = search.Pace(deadline=time.monotonic() + 10.0)  # 10 s at 1000 img/s: 10,000 images
    assert pace.fit(candidate, units_left=1.0, n_train=500) == candidate  # 20 epochs fit
    shorter = pace.fit(candidate, units_left=4.0, n_train=500)  # 2.5 s a unit: 5 epochs
    assert shorter.config.epochs == pytest.approx(5.0, abs=0.2)
    assert shorter.config.lr == candidate.config.lr


def test_pace_learns_from_runs_slower_than_probed(tiny_search: list[Candidate]) -> None:
    candidate = tiny_candidate()
    pace = search.Pace(deadline=time.monotonic() + 10.0)
    pace.record(candidate, images_trained=1000, seconds=2.0)  # probe said 1 s
    assert pace.images_per_s(candidate) == pytest.approx(IMAGES_PER_SECOND / 2)
    assert pace.fit(candidate.with_epochs(20.0, 0), 1.0, 500).config.epochs == pytest.approx(
        10.0, abs=0.2
    )


def test_pace_without_a_deadline_keeps_the_plan(tiny_search: list[Candidate]) -> None:
    candidate = tiny_candidate().with_epochs(7.0, seed=0)
    assert search.Pace(deadline=None).fit(candidate, 99.0, 10**6) == candidate


def test_time_of_candidates_not_worth_screening_goes_to_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, slow = tiny_candidate(), Candidate("lite0", TrainConfig(batch_size=8, bf16=False))
    speeds = {"synthnet": IMAGES_PER_SECOND, "lite0": 1.0}  # lite0 gets < 3 epochs
    monkeypatch.setattr(candidates, "training_speed", lambda family, *args: speeds[family])
    pace = search.Pace(deadline=time.monotonic() + 100.0)
    planned, unit_s = search.plan_candidates([slow, fast], 2, 5, 1000, pace, seed=0)
    assert [c.family for c in planned] == ["synthnet"]
    assert unit_s == pytest.approx(100.0 / search.plan_units(1, 5), rel=0.02)


def test_before_any_run_the_pace_assumes_its_prior_then_measures(
    tiny_search: list[Candidate],
) -> None:
    candidate = tiny_candidate()
    pace = search.Pace(deadline=time.monotonic() + 10.0, prior=1.25)
    assert pace.images_per_s(candidate) == pytest.approx(IMAGES_PER_SECOND / 1.25)
    pace.record(candidate, images_trained=1000, seconds=1.0)  # exactly as probed
    assert pace.images_per_s(candidate) == pytest.approx(IMAGES_PER_SECOND)


def test_pace_grows_a_run_only_when_asked_and_only_up_to_the_family_ceiling(
    tiny_search: list[Candidate],
) -> None:
    candidate = tiny_candidate().with_epochs(10.0, seed=0)
    pace = search.Pace(deadline=time.monotonic() + 10.0)  # a unit of 500 images: 20 epochs
    assert pace.fit(candidate, 1.0, 500) == candidate  # screening runs never grow
    grown = pace.fit(candidate, 1.0, 500, grow=True)
    assert grown.config.epochs == pytest.approx(20.0, abs=0.3)
    assert grown.config.lr == candidate.config.lr
    nearly = candidate.with_epochs(19.0, seed=0)  # less than GROWTH_MIN more fits: keep it
    assert pace.fit(nearly, 1.0, 500, grow=True) == nearly
    ceiling = search.MAX_EPOCHS["synthnet"]
    capped = pace.fit(candidate, 1.0, 10, grow=True)  # 1,000 epochs would fit
    assert capped.config.epochs == ceiling


def test_the_reserve_keeps_back_time_to_score_the_held_out_images(
    tiny_search: list[Candidate],
) -> None:
    candidate = tiny_candidate()
    deadline = time.monotonic() + 100.0
    plain = search.Pace(deadline, reserve_s=5.0)
    scoring = search.Pace(deadline, reserve_s=5.0, scored_images=40_000)
    assert plain.reserve_for(candidate) == 5.0
    expected = 5.0 + 40_000 / SCORING_PER_SECOND
    assert scoring.reserve_for(candidate) == pytest.approx(expected)
    assert plain.seconds_left(candidate) - scoring.seconds_left(candidate) == pytest.approx(
        expected - 5.0, abs=0.05
    )
    scoring.record_scoring(forward_passes=640, seconds=0.5)  # a fold's validation, measured
    assert scoring.reserve_for(candidate) == pytest.approx(5.0 + 40_000 / 1280)


def test_a_frozen_candidate_reserves_scoring_at_the_whole_network_s_speed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inference runs the frozen prefix too: the fast frozen training speed must not count."""
    monkeypatch.setattr(candidates, "training_speed", lambda *args: 650.0)
    monkeypatch.setattr(candidates, "scoring_speed", lambda family, spec, depth, neck: 1000.0)
    frozen = search.search_space(0, 1600)[1]
    assert frozen.config.frozen_blocks
    pace = search.Pace(time.monotonic() + 100.0, scored_images=4000)
    assert pace.reserve_for(frozen) == pytest.approx(4.0)
    assert search.Pace(time.monotonic() + 100.0).reserve_for(frozen) == 0.0


def test_the_scoring_probe_measures_a_positive_rate() -> None:
    assert candidates.scoring_speed("synthnet", TINY, 16) > 0


def test_plan_search_probes_only_the_candidates_it_may_train(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probed: list[float] = []

    def probe(
        family: str,
        spec: object,
        depth: int,
        batch_size: int,
        bf16: bool,
        frozen: int = 0,
        neck: int = 0,
    ) -> float:
        probed.append(batch_size)
        return IMAGES_PER_SECOND

    monkeypatch.setattr(candidates, "training_speed", probe)
    space = [
        Candidate("synthnet", TrainConfig(batch_size=size, bf16=False), TINY)
        for size in (8, 16, 32)
    ]
    pace = search.Pace(deadline=time.monotonic() + 100.0)
    planned, _ = search.plan_search(space, 1, 5, 1000, pace, seed=0)
    assert [c.config.batch_size for c in planned] == [8]
    assert set(probed) == {8}
    planned, _ = search.plan_search(space, 2, 5, 1000, pace, seed=0)
    assert [c.config.batch_size for c in planned] == [8, 16]
    assert set(probed) == {8, 16}  # the third is never probed


@pytest.mark.parametrize(
    ("family", "epochs", "n_train", "long_run"),
    [
        ("lite0", 25.0, 1280, True),
        ("lite0", 5.0, 1280, False),
        ("lite0", 25.0, 24_000, False),
        ("synthnet", 25.0, 1280, False),
    ],
)
def test_long_runs_on_small_sets_get_mixup_and_wider_translations(
    family: str, epochs: float, n_train: int, long_run: bool
) -> None:
    candidate = Candidate(family, TrainConfig(), TINY if family == "synthnet" else None)
    config = candidate.with_epochs(epochs, seed=3, n_train=n_train).config
    assert (config.epochs, config.seed) == (epochs, 3)
    assert (config.mixup_alpha > 0) == long_run
    assert config.translate == (4 if long_run else 2)


# --- a whole retrain run -------------------------------------------------------------


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    """60 PNGs, 32x32, in real/ (dark) and synthetic/ (bright), and one broken file."""
    root = tmp_path / "data"
    images, labels = bright_and_dark(60, size=32)
    for i, (pixels, k) in enumerate(zip(images, labels, strict=True)):
        folder = root / LABELS[k]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:02d}.png").write_bytes(png_bytes(pixels))
    (root / "synthetic" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def retrain_request(
    folder: Path, storage: Storage, settings: Settings, promotion: PromotionPolicy | None = None
) -> RetrainRequest:
    """Retrain "toy" on ``folder`` (labels from sub-folders): one trial, 2-fold CV."""

    def items() -> list[InputItem]:
        paths = [str(folder)]
        return list(
            expand_paths(paths, storage, settings.max_image_bytes, labels_from_folders=True)
        )

    return RetrainRequest(
        model="toy",
        source=str(folder),
        items=items,
        budget=Budget(seconds=None, trials=1),
        folds=2,
        promotion=promotion or PromotionPolicy(),
    )


def test_run_retrain_publishes_a_calibrated_version_and_gates_it(
    tiny_search: list[Candidate], labelled_folder: Path, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    settings = Settings(model_registry=str(root), device="cpu")
    storage = Storage(lambda: pytest.fail("no S3 in this test"))
    # the bundled models are a root too, but no production "toy" exists: nothing is loaded
    registry = ModelRegistry.from_settings(settings, storage)
    messages: list[str] = []

    request = retrain_request(labelled_folder, storage, settings)
    summary = run_retrain(request, settings, storage, registry, messages.append)

    assert summary.status == "succeeded"
    assert summary.model == ModelId(name="toy", version="1")
    assert summary.promoted
    assert summary.decision == "promoted: there was no production version yet"
    assert summary.production_accuracy is None
    version = root / "toy" / "1"
    assert summary.card_uri == str(version / "card.json")
    assert summary.report_uri == str(version / "report.html")
    assert "toy@1" in (version / "report.html").read_text()
    heldout_rows = [
        ImageResult.model_validate_json(line)
        for line in (version / HELDOUT_NAME).read_text().splitlines()
    ]
    assert len(heldout_rows) == 12  # the held-out images, with their true labels
    assert all(r.true_label in LABELS and r.model == summary.model for r in heldout_rows)
    correct = sum(r.label == r.true_label for r in heldout_rows)
    assert summary.heldout_accuracy == pytest.approx(correct / 12)
    model_bytes = (version / "model.pt").read_bytes()
    card = registry.read_card(summary.model)
    assert json.loads((version / "card.json").read_text())["sha256"] == card.sha256
    assert card.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert card.labels == LABELS
    assert card.preprocessing.input_size == (32, 32)

    heldout, cv = card.metrics["heldout"], card.metrics["cv"]
    assert heldout.n == 12  # 20% of each label
    assert summary.heldout_accuracy == heldout.accuracy
    assert cv.n == 48
    assert cv.accuracy_std is not None
    assert set(heldout.per_class_accuracy) == set(cv.per_class_accuracy) == set(LABELS)
    assert heldout.accuracy >= 0.9
    assert card.calibration.temperature > 0

    training = card.training
    assert training is not None
    assert training.data.counts == {"real": 24, "synthetic": 24}
    assert training.data.unreadable == 1
    hyper = training.hyperparameters
    assert hyper["winner"] == tiny_search[0].describe()
    assert [t["epochs"] for t in hyper["trials"]] == [5.0]

    domain = card.domain  # the retrained model's own training domain
    assert domain is not None
    assert domain.features is not None
    assert domain.input_sizes == {"32x32": 48}
    assert domain.formats == {"PNG": 48}
    assert domain.narrow is True
    assert domain.features.fitted_on == 48
    assert domain.features.heldout == 12
    assert domain.features.coverage >= 0.99

    loaded = load_model(card, model_bytes, CPU)
    images, labels = bright_and_dark(20, size=32, seed=9)
    assert (loaded.predict_proba(images).argmax(1) == labels).mean() >= 0.9
    scores = loaded.score(images).domain_scores
    assert scores is not None
    assert (scores <= domain.features.threshold).mean() >= 0.9
    assert registry.resolve(ModelRef(name="toy")) == summary.model
    assert any(m.startswith("published toy@1") for m in messages)

    never = retrain_request(labelled_folder, storage, settings, PromotionPolicy(mode="never"))
    second = run_retrain(never, settings, storage, registry)
    assert second.model.version == "2"
    assert not second.promoted
    assert second.decision == "kept as a candidate: the promotion policy is 'never'"
    assert registry.resolve(ModelRef(name="toy")) == summary.model
    assert (root / "toy" / "2" / "model.pt").is_file()


@pytest.mark.parametrize(("min_images", "fitted_on"), [(1, 12), (10**6, 48)])
def test_the_temperature_is_fitted_on_held_out_logits_when_there_are_enough(
    tiny_search: list[Candidate],
    labelled_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    min_images: int,
    fitted_on: int,
) -> None:
    """Held-out logits are the shipped ensemble's own; out-of-fold ones are single models'."""
    from worker.retrain import run as retrain
    from worker.retrain.training.calibration import fit_temperature

    monkeypatch.setattr(retrain, "MIN_CALIBRATION_IMAGES", min_images)
    sizes: list[int] = []

    def recording_fit(logits: np.ndarray, labels: np.ndarray) -> float:
        sizes.append(len(labels))
        return fit_temperature(logits, labels)

    monkeypatch.setattr(retrain, "fit_temperature", recording_fit)
    settings = Settings(model_registry=str(tmp_path / "registry"), device="cpu")
    storage = Storage(lambda: pytest.fail("no S3 in this test"))
    registry = ModelRegistry.from_settings(settings, storage)
    summary = run_retrain(
        retrain_request(labelled_folder, storage, settings), settings, storage, registry
    )
    assert summary.status == "succeeded"
    assert sizes[0] == 48  # the CV metrics always use out-of-fold logits
    assert sizes[1:] == ([fitted_on] if fitted_on == 12 else [])


def test_large_sets_try_the_whole_backbone_first() -> None:
    def order(n_train: int) -> list[int]:
        return [c.depth for c in search.search_space(0, n_train) if c.family == "lite0"]

    assert order(1600) == [8, 8, 8, 9, 16]
    assert order(24_000) == [16, 9, 8]
    assert all(c.config.frozen_blocks == 0 for c in search.search_space(0, 24_000))


@pytest.mark.parametrize(("seconds", "frozen"), [(60.0, 5), (200.0, 3), (600.0, 0)])
def test_small_sets_freeze_more_of_the_network_the_shorter_the_time(
    monkeypatch: pytest.MonkeyPatch, seconds: float, frozen: int
) -> None:
    """1,600 images at 250 (whole), 650 (three blocks frozen) and 1,500 images/s (five): 60 s
    buys the three-block freeze under its 8 epochs per unit, 200 s buys it more but the whole
    network under 8, 600 s buys the whole network more than 8."""
    speeds = {0: 250.0, 3: 650.0, 5: 1500.0}

    def probe(
        family: str, spec: object, depth: int, size: int, bf16: bool, blocks: int = 0, neck: int = 0
    ):
        return speeds[blocks]

    monkeypatch.setattr(candidates, "training_speed", probe)
    space = search.search_space(0, 1600)
    pace = search.Pace(deadline=time.monotonic() + seconds)
    planned, _ = search.plan_search(space, 1, 5, 1600, pace, seed=0)
    assert planned[0].config.frozen_blocks == frozen
    assert planned[0].depth == 8
    assert planned[0].config.epochs >= (planned[0].min_epochs or 0)


def test_a_frozen_prefix_retrain_caches_once_and_exports_a_working_model(
    labelled_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both folds and the final fit train on one cache; the export runs the whole network."""
    from worker.retrain.training import frozen as frozen_module

    config = TrainConfig(
        lr=1e-2, batch_size=8, bf16=False, precise_bn=True, frozen_blocks=3, shift_per_image=True
    )
    candidate = Candidate("lite0", config, depth=4)
    monkeypatch.setattr(search, "search_space", lambda seed=0, n_train=0: [candidate])
    monkeypatch.setitem(search.DEFAULT_EPOCHS, "lite0", 4.0)
    builds: list[int] = []
    original = frozen_module.PrefixCache.build.__func__  # type: ignore[attr-defined]

    def counted(cls: type, net: object, images: np.ndarray, *args: object) -> object:
        builds.append(len(images))
        return original(cls, net, images, *args)

    monkeypatch.setattr(frozen_module.PrefixCache, "build", classmethod(counted))
    settings = Settings(model_registry=str(tmp_path / "registry"), device="cpu")
    storage = Storage(lambda: pytest.fail("no S3 in this test"))
    registry = ModelRegistry.from_settings(settings, storage)

    request = retrain_request(labelled_folder, storage, settings)
    summary = run_retrain(request, settings, storage, registry)
    assert builds == [48]  # the whole training pool, once
    card, model_bytes = registry.read_model(summary.model)
    assert card.training is not None
    assert card.training.hyperparameters["config"]["frozen_blocks"] == 3
    assert "frozen=3" in card.training.hyperparameters["winner"]
    images, labels = bright_and_dark(20, size=32, seed=9)
    loaded = load_model(card, model_bytes, CPU)
    assert (loaded.predict_proba(images).argmax(1) == labels).mean() >= 0.9


def test_each_search_probes_the_speed_afresh() -> None:
    """A worker runs many retrains; one probe taken while the CPU was busy must not steer all."""
    candidates.forget_probed_speeds()
    candidates.training_speed("synthnet", TINY, 16, 8, False)
    candidates.scoring_speed("synthnet", TINY, 16)
    assert candidates.training_speed.cache_info().currsize == 1
    candidates.forget_probed_speeds()
    assert candidates.training_speed.cache_info().currsize == 0
    assert candidates.scoring_speed.cache_info().currsize == 0
