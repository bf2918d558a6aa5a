"""The promotion gate: when a new version takes the production alias, and what it says why.

``promotion_decision`` is the rule; ``_gate`` applies it against a real registry (the
bundled default model as production, scored on the candidate's held-out images).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from contracts import EvaluationMetrics, ModelId, PromotionPolicy
from tests.support.memory_store import MemoryStore
from worker.inference.registry import ModelRegistry
from worker.retrain.run import _gate, promotion_decision
from worker.retrain.training.dataset import LabelledImages
from worker.settings import Settings
from worker.storage import Storage

IF_NOT_WORSE = PromotionPolicy()


def test_without_a_production_version_the_candidate_is_promoted() -> None:
    promoted, reason = promotion_decision(0.61, None, IF_NOT_WORSE)
    assert promoted
    assert reason == "promoted: there was no production version yet"


def test_a_better_candidate_is_promoted() -> None:
    promoted, reason = promotion_decision(0.93, 0.90, IF_NOT_WORSE, production_version="4")
    assert promoted
    assert reason == "promoted: held-out accuracy 0.9300 vs production 4 0.9000 (margin 0.0)"


def test_an_equal_candidate_is_promoted() -> None:
    assert promotion_decision(0.9, 0.9, IF_NOT_WORSE)[0]


def test_a_worse_candidate_is_kept_and_the_reason_names_both_accuracies() -> None:
    policy = PromotionPolicy(margin=0.02)
    promoted, reason = promotion_decision(0.71, 0.95, policy, production_version="1")
    assert not promoted
    assert reason.startswith("kept as a candidate, worse than production")
    assert re.search(r"\b0\.7100\b", reason)
    assert re.search(r"\b0\.9500\b", reason)
    assert "production 1" in reason
    assert "margin 0.02" in reason


@pytest.mark.parametrize(
    ("candidate", "production", "margin"),
    [
        pytest.param(0.94, 0.95, 0.02, id="inside the margin"),
        pytest.param(0.7, 0.8, 0.1, id="exactly at the margin despite float rounding"),
        pytest.param(0.5, 0.95, 1.0, id="margin 1 promotes anything"),
    ],
)
def test_a_candidate_within_the_margin_is_promoted(
    candidate: float, production: float, margin: float
) -> None:
    promoted, reason = promotion_decision(candidate, production, PromotionPolicy(margin=margin))
    assert promoted, reason
    assert reason.startswith("promoted: held-out accuracy")


def test_just_beyond_the_margin_is_kept() -> None:
    assert not promotion_decision(0.69, 0.8, PromotionPolicy(margin=0.1))[0]


@pytest.mark.parametrize("production", [None, 0.5, 0.99])
def test_mode_never_keeps_every_candidate(production: float | None) -> None:
    promoted, reason = promotion_decision(0.9, production, PromotionPolicy(mode="never"))
    assert not promoted
    assert reason == "kept as a candidate: the promotion policy is 'never'"


def test_mode_always_promotes_a_worse_candidate_and_still_reports_the_comparison() -> None:
    promoted, reason = promotion_decision(0.5, 0.95, PromotionPolicy(mode="always"), "1")
    assert promoted
    assert reason == (
        "promoted by policy 'always': held-out accuracy 0.5000 vs production 1 0.9500 (margin 0.0)"
    )


# --- the gate against a real registry ----------------------------------------------------


def heldout(accuracy: float) -> EvaluationMetrics:
    return EvaluationMetrics(
        dataset="held-out", n=40, accuracy=accuracy, per_class_accuracy={"real": accuracy}
    )


def images_32(labels: list[str]) -> LabelledImages:
    rng = np.random.default_rng(0)
    return LabelledImages(
        images=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        labels=np.array([i % 2 for i in range(40)]),
        label_names=labels,
        uris=[f"s3://b/{i}.jpg" for i in range(40)],
    )


@pytest.fixture
def bundled(tmp_path: Path) -> ModelRegistry:
    """The configured root is empty: production is the bundled default model."""
    return ModelRegistry.from_settings(Settings(model_registry=str(tmp_path)), Storage(MemoryStore))


CANDIDATE = ModelId(name="default", version="99")


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("accuracy", "promoted"), [(1.0, True), (0.0, False)])
def test_the_gate_scores_production_on_the_same_images(
    bundled: ModelRegistry, accuracy: float, promoted: bool
) -> None:
    decision, reason, production = _gate(
        bundled,
        CANDIDATE,
        heldout(accuracy),
        images_32(["real", "synthetic"]),
        IF_NOT_WORSE,
        Settings(device="cpu"),
    )
    assert production is not None
    assert 0.0 < production < 1.0  # random pixels: production is right about some of them
    assert decision is promoted
    assert f"{production:.4f}" in reason


def test_the_gate_keeps_a_candidate_whose_labels_production_does_not_share(
    bundled: ModelRegistry,
) -> None:
    holdout = images_32(["fake", "real"])
    kept = _gate(bundled, CANDIDATE, heldout(1.0), holdout, IF_NOT_WORSE, Settings(device="cpu"))
    assert kept[0] is False
    assert "other labels" in kept[1]
    always = PromotionPolicy(mode="always")
    assert _gate(bundled, CANDIDATE, heldout(0.1), holdout, always, Settings(device="cpu"))[0]


def test_the_gate_promotes_the_first_version_of_a_model(bundled: ModelRegistry) -> None:
    first = ModelId(name="brand-new", version="1")
    decision = _gate(
        bundled,
        first,
        heldout(0.5),
        images_32(["real", "synthetic"]),
        IF_NOT_WORSE,
        Settings(device="cpu"),
    )
    assert decision == (True, "promoted: there was no production version yet", None)
