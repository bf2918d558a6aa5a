"""The domain check: the size rule, the feature score from the same forward pass, and models
that cannot tell (no summary, no score) reported as unknown, never as a pass."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from contracts import DomainSummary, FeatureSummary, ModelCard
from tests.support.tiny_model import TINY_INPUT_SIZE, tiny_domain_model, tiny_model
from tests.support.toy_images import bright_and_dark
from worker.errors import ModelError
from worker.imaging import SourceInfo
from worker.inference.domain import NO_FEATURES, NO_SCORE, NO_SUMMARY, judge_domain
from worker.inference.model import load_model, sha256_hex

CPU = torch.device("cpu")
THUMBNAIL = SourceInfo(width=32, height=32, format="JPEG")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def card_with(domain: DomainSummary | None) -> ModelCard:
    card, _ = tiny_model()
    return card.model_copy(update={"domain": domain})


def cifake_like(features: bool = True) -> DomainSummary:
    return DomainSummary(
        description="32x32 thumbnails",
        narrow=True,
        input_sizes={"32x32": 1000},
        width_range=(32, 32),
        height_range=(32, 32),
        formats={"JPEG": 1000},
        features=FeatureSummary(
            taps=["block 4 (global average)"],
            dimensions=40,
            fitted_on=1000,
            threshold=5.0,
            coverage=0.995,
            heldout=200,
        )
        if features
        else None,
    )


# --- judging ------------------------------------------------------------------------------


def test_a_phone_photo_is_out_of_domain_by_its_size_whatever_its_score() -> None:
    check = judge_domain(card_with(cifake_like()), SourceInfo(3024, 4032, "JPEG"), 0.1)
    assert check.in_domain is False
    assert check.reason == "input 3024x4032 is far outside the training sizes 32x32"
    assert check.score == pytest.approx(0.1)


@pytest.mark.parametrize(("side", "inside"), [(16, True), (64, True), (15, False), (65, False)])
def test_the_size_rule_allows_twice_the_training_range(side: int, inside: bool) -> None:
    check = judge_domain(card_with(cifake_like()), SourceInfo(side, side, "PNG"), 1.0)
    assert check.in_domain is inside


def test_a_high_feature_score_is_out_of_domain_with_the_threshold() -> None:
    check = judge_domain(card_with(cifake_like()), THUMBNAIL, 7.5)
    assert check.in_domain is False
    assert check.threshold == pytest.approx(5.0)
    assert check.reason is not None
    assert check.reason.startswith("features unlike the training")


def test_a_low_feature_score_is_in_domain() -> None:
    check = judge_domain(card_with(cifake_like()), THUMBNAIL, 4.9)
    assert check.in_domain is True
    assert check.reason is None


def test_a_nan_score_is_out_of_domain() -> None:
    assert judge_domain(card_with(cifake_like()), THUMBNAIL, float("nan")).in_domain is False


def test_a_card_without_a_domain_is_unknown_not_a_pass() -> None:
    check = judge_domain(card_with(None), THUMBNAIL, None)
    assert check.in_domain is None
    assert check.reason == NO_SUMMARY


def test_a_file_without_a_domain_score_is_unknown_unless_the_size_decides() -> None:
    card = card_with(cifake_like())
    assert judge_domain(card, THUMBNAIL, None).reason == NO_SCORE
    assert judge_domain(card, THUMBNAIL, None).in_domain is None
    assert judge_domain(card, SourceInfo(640, 480, "PNG"), None).in_domain is False


def test_a_summary_without_features_checks_the_size_only() -> None:
    card = card_with(cifake_like(features=False))
    check = judge_domain(card, THUMBNAIL, 3.0)
    assert check.in_domain is None
    assert check.reason == NO_FEATURES


def test_varied_training_sizes_are_named_as_a_range() -> None:
    domain = cifake_like().model_copy(update={"width_range": (24, 640), "height_range": (24, 480)})
    check = judge_domain(card_with(domain), SourceInfo(4000, 3000, "JPEG"), 1.0)
    assert check.reason == "input 4000x3000 is far outside the training sizes from 24x24 to 640x480"


# --- the model's own score -------------------------------------------------------------------


def test_a_domain_model_scores_familiar_images_low_and_strange_ones_high() -> None:
    card, data = tiny_domain_model()
    model = load_model(card, data, CPU)
    familiar, _ = bright_and_dark(64, size=TINY_INPUT_SIZE[0], seed=9)
    checkerboard = np.zeros((8, *TINY_INPUT_SIZE, 3), dtype=np.uint8)
    checkerboard[:, ::2, ::2] = 255
    checkerboard[:, 1::2, 1::2] = 255
    checkerboard[:, :, :, 1] = 0
    scored = model.score(np.concatenate([familiar, checkerboard]))
    assert scored.domain_scores is not None
    assert card.domain is not None
    assert card.domain.features is not None
    threshold = card.domain.features.threshold
    assert (scored.domain_scores[:64] <= threshold).mean() >= 0.95
    assert (scored.domain_scores[64:] > threshold).all()
    predictions = model.predict(familiar[:3])
    assert all(p.domain_score is not None for p in predictions)


def test_a_logits_only_model_still_serves_without_domain_scores() -> None:
    card, data = tiny_model()
    model = load_model(card, data, CPU)
    images, _ = bright_and_dark(4, size=TINY_INPUT_SIZE[0])
    assert model.score(images).domain_scores is None
    assert [p.domain_score for p in model.predict(images)] == [None] * 4


class _ThreeOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = x.mean((2, 3))[:, :2]
        return logits, logits[:, 0], logits[:, 1]


def test_a_model_returning_something_else_is_refused_at_load() -> None:
    traced = torch.jit.trace(_ThreeOutputs(), torch.zeros(2, 3, *TINY_INPUT_SIZE))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    data = buffer.getvalue()
    card, _ = tiny_model()
    card = card.model_copy(update={"sha256": sha256_hex(data), "size_bytes": len(data)})
    with pytest.raises(ModelError, match="must return logits"):
        load_model(card, data, CPU)
