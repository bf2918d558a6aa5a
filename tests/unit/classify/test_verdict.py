"""Where results are made: the domain policy (flag, abstain, auto), provenance deciding a
label only when validated, and the counts a summary takes from them."""

from __future__ import annotations

import pytest

from contracts import (
    DomainSummary,
    ErrorCode,
    FeatureSummary,
    ImageResult,
    ModelCard,
    ModelId,
    Provenance,
)
from tests.support.tiny_model import tiny_model
from worker.classify.tally import ResultTally
from worker.classify.verdict import DomainPolicy, PolicyName, make_result
from worker.imaging import SourceInfo
from worker.inference.model import Prediction

TINY_ID = ModelId(name="tiny", version="1")
SMALL = SourceInfo(width=8, height=8, format="PNG")
HUGE = SourceInfo(width=3024, height=4032, format="JPEG")
AI_SIGNED = Provenance(
    source="c2pa", claim="trainedAlgorithmicMedia", ai_generated=True, validated=True
)


def card(narrow: bool = True, labels: list[str] | None = None) -> ModelCard:
    base, _ = tiny_model()
    domain = DomainSummary(
        description="toy",
        narrow=narrow,
        input_sizes={"8x8": 10},
        width_range=(8, 8),
        height_range=(8, 8),
        formats={"PNG": 10},
        features=FeatureSummary(
            taps=["pooled features"],
            dimensions=16,
            fitted_on=10,
            threshold=3.0,
            coverage=1.0,
            heldout=10,
        ),
    )
    return base.model_copy(update={"domain": domain, "labels": labels or ["real", "synthetic"]})


def prediction(score: float | None = 1.0, label: str = "real") -> Prediction:
    other = "synthetic" if label == "real" else "real"
    return Prediction(
        label=label,
        confidence=0.97,
        scores={label: 0.97, other: 0.03},
        model=TINY_ID,
        domain_score=score,
    )


def result(
    *,
    policy: PolicyName = "auto",
    source: SourceInfo = SMALL,
    score: float | None = 1.0,
    provenance: Provenance | None = None,
    model_card: ModelCard | None = None,
) -> ImageResult:
    return make_result(
        uri="s3://b/a.png",
        prediction=prediction(score),
        card=model_card or card(),
        source=source,
        provenance=provenance,
        policy=DomainPolicy(policy),
        true_label="real",
    )


def test_an_in_domain_image_is_labelled_by_the_model() -> None:
    r = result()
    assert r.label == "real"
    assert r.decided_by == "model"
    assert r.domain.in_domain is True


@pytest.mark.parametrize(("source", "score"), [(HUGE, 1.0), (SMALL, 9.0)])
def test_abstain_gives_no_label_the_stable_code_and_keeps_the_scores(
    source: SourceInfo, score: float
) -> None:
    r = result(policy="abstain", source=source, score=score)
    assert r.label is None
    assert r.confidence is None
    assert r.error.code == ErrorCode.OUT_OF_DOMAIN
    assert r.error.message.startswith("the model abstains: ")
    assert r.scores == {"real": 0.97, "synthetic": 0.03}
    assert r.domain.in_domain is False
    assert r.abstained
    assert r.model == TINY_ID


def test_flag_keeps_the_label_and_reports_the_domain() -> None:
    r = result(policy="flag", source=HUGE)
    assert r.label == "real"
    assert r.error is None
    assert r.domain.in_domain is False
    assert "far outside" in r.domain.reason


def test_auto_abstains_for_a_narrow_domain_and_flags_a_broad_one() -> None:
    assert result(source=HUGE).error is not None
    broad = result(source=HUGE, model_card=card(narrow=False))
    assert broad.label == "real"
    assert broad.domain.in_domain is False


def test_an_unknown_domain_never_abstains() -> None:
    r = result(policy="abstain", score=None)
    assert r.label == "real"
    assert r.domain.in_domain is None
    assert r.domain.reason


def test_a_validated_ai_claim_decides_even_out_of_domain() -> None:
    r = result(policy="abstain", source=HUGE, provenance=AI_SIGNED)
    assert r.label == "synthetic"
    assert r.confidence == 1.0
    assert r.decided_by == "provenance"
    assert r.scores == {"real": 0.97, "synthetic": 0.03}  # the pixels' own opinion stays
    assert r.provenance == AI_SIGNED


@pytest.mark.parametrize(
    "provenance",
    [
        AI_SIGNED.model_copy(update={"validated": False}),
        Provenance(source="xmp", claim="trainedAlgorithmicMedia", ai_generated=True),
        Provenance(source="png_text", ai_generated=True, generator="ComfyUI"),
        AI_SIGNED.model_copy(update={"ai_generated": False, "claim": "digitalCapture"}),
    ],
)
def test_anything_short_of_a_validated_ai_claim_is_reported_only(provenance: Provenance) -> None:
    r = result(provenance=provenance)
    assert r.label == "real"
    assert r.decided_by == "model"
    assert r.provenance == provenance


def test_a_model_without_a_synthetic_label_is_never_overridden() -> None:
    r = result(provenance=AI_SIGNED, model_card=card(labels=["real", "fake"]))
    assert r.decided_by == "model"


def test_the_tally_counts_abstentions_as_answers_and_out_of_domain_images() -> None:
    tally = ResultTally()
    for r in (
        result(),
        result(policy="abstain", source=HUGE),
        result(policy="flag", source=HUGE),
        result(provenance=AI_SIGNED),
    ):
        tally.add(r)
    counts = tally.to_counts()
    assert counts.total == 4
    assert counts.by_error == {ErrorCode.OUT_OF_DOMAIN: 1}
    assert counts.out_of_domain == 2
    assert counts.decided_by_provenance == 1
    assert tally.status() == "succeeded"
    assert tally.failed == 0
    assert tally.abstained == 1
