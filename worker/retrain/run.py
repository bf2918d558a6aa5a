"""A retrain run from labelled images to a published (and maybe promoted) model version.

::

    dataset ─► decode (serving preprocessing) ─► held-out split ─► search + k-fold CV
        ─► final fit ─► final model = mean of fold models and final fit, mirrored views too
        ─► held-out logits ─► temperature (cross-fitted ECE) ─► TorchScript + card
        ─► publish <registry>/<name>/<version>/ + report.html + heldout-predictions.jsonl
        ─► promotion gate ─► summary

The held-out images are never seen by the search or the CV; they only fit the
temperature (one number that changes no label; its ECE is cross-fitted), and
the gate compares the new version with the current ``production`` version on
exactly those images. Used by the ``retrain`` queue task and ``synthdetect train``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from contracts import (
    Budget,
    Calibration,
    EvaluationMetrics,
    ImageResult,
    ModelId,
    ModelRef,
    Preprocessing,
    PromotionPolicy,
    RetrainSummary,
    TrainingInfo,
)
from worker.classify.inputs import InputItem
from worker.errors import ModelError
from worker.imaging import ImageLimits
from worker.inference.device import select_device
from worker.inference.model import load_model
from worker.inference.registry import ModelRegistry
from worker.logs import get_logger
from worker.retrain.training.calibration import cross_fitted_probabilities, fit_temperature
from worker.retrain.training.candidates import IMAGENET_NORMALISATION
from worker.retrain.training.dataset import (
    LabelledImages,
    LoadReport,
    data_summary,
    load_labelled_images,
)
from worker.retrain.training.domain import (
    MAX_FIT_IMAGES,
    DomainScored,
    domain_summary,
    fit_domain,
)
from worker.retrain.training.export import build_card, export_torchscript
from worker.retrain.training.loop import predict_logits, train_classifier
from worker.retrain.training.search import SearchOutcome, search
from worker.retrain.training.splits import stratified_split
from worker.review.evaluation import evaluation_metrics, softmax
from worker.review.views import write_training_report
from worker.settings import Settings
from worker.storage import Storage, join_uri

log = get_logger(__name__)

INPUT_SIZE = (32, 32)
EXPORT_RESERVE_S = 4.0
"""Seconds kept back from the budget for export, publication, the report and the gate
(for a six-network model on a 2-core AVX2 CPU: export 2.1 s, report 0.8 s, the rest
0.3 s); scoring the held-out images is reserved separately, at the rate the CV's
validation predictions had."""
HELDOUT_NAME = "heldout-predictions.jsonl"
"""The held-out images' calibrated predictions, next to a published version's card."""
MIN_CALIBRATION_IMAGES = 200
"""Fewer held-out images than this fit a noisy temperature: the out-of-fold logits fit it."""
_ROUNDING = 1e-9
"""Accuracies are fractions k/n; e.g. 0.8 - 0.1 is 0.7000000000000001 in floats."""


@dataclass(frozen=True)
class RetrainRequest:
    """Everything a run needs, whether it came from the queue or the command line."""

    model: str
    source: str
    items: Callable[[], Iterable[InputItem]]
    holdout_items: Callable[[], Iterable[InputItem]] | None = None
    holdout_share: float = 0.2
    budget: Budget = field(default_factory=Budget)
    folds: int = 5
    promotion: PromotionPolicy = field(default_factory=PromotionPolicy)
    seed: int = 0
    job_id: str = "local"


class MeanLogits(nn.Module):
    """The final model: mean logits of several networks over an image and its mirror image."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x, ())[0]

    def forward_taps(
        self, x: torch.Tensor, taps: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The mean logits, and the first network's features at ``taps`` (the domain check
        reads one network: its own forward pass, not a second one)."""
        mirrored = x.flip(3)
        total = torch.zeros(0)
        found: list[torch.Tensor] = []
        for i, net in enumerate(self.nets):
            if i == 0 and taps:
                plain, found = net.forward_taps(x, taps)  # type: ignore[operator]
                logits = plain + net(mirrored)
            else:
                logits = net(x) + net(mirrored)
            total = logits if i == 0 else total + logits
        return total / (2 * len(self.nets)), found

    def default_taps(self) -> tuple[int, ...]:
        taps: tuple[int, ...] = self.nets[0].default_taps()  # type: ignore[operator]
        return taps


def preprocessing() -> Preprocessing:
    """The serving preprocessing of every model a retrain produces."""
    norm = IMAGENET_NORMALISATION
    return Preprocessing(input_size=INPUT_SIZE, mean=norm.mean, std=norm.std)


def run_retrain(
    request: RetrainRequest,
    settings: Settings,
    storage: Storage,
    registry: ModelRegistry,
    on_progress: Callable[[str], None] | None = None,
) -> RetrainSummary:
    """Train, evaluate, publish and gate one new version; never raises for bad images."""
    say = on_progress or (lambda message: None)
    started = time.monotonic()
    deadline = started + request.budget.seconds if request.budget.seconds else None
    limits = ImageLimits.from_settings(settings)
    spec = preprocessing()

    data, report = load_labelled_images(request.items(), spec, limits)
    say(f"loaded {len(data)} images {data.counts()}, {len(report.unreadable)} unreadable")
    if len(data.label_names) < 2:
        raise ModelError(f"need at least two labels to train, found {data.label_names}")
    pool, holdout = _holdout(data, request, spec, limits)
    say(f"training pool {len(pool)}, held out {len(holdout)}")

    outcome = search(
        pool,
        request.budget,
        request.folds,
        request.seed,
        deadline=deadline,
        reserve_s=EXPORT_RESERVE_S,
        # MeanLogits: 2 views, k+1 nets; then the domain fit: one net over pool and held-out
        scored_images=len(holdout) * 2 * (request.folds + 1)
        + min(len(pool), MAX_FIT_IMAGES)
        + len(holdout),
        on_progress=say,
    )
    final_candidate = outcome.final_candidate(len(pool))
    reserve = outcome.pace.reserve_for(final_candidate) if outcome.pace else EXPORT_RESERVE_S
    final_net = final_candidate.build(len(pool.label_names))
    fit_started = time.monotonic()
    train_classifier(
        final_net,
        pool.images,
        pool.labels,
        IMAGENET_NORMALISATION,
        final_candidate.config,
        deadline=None if deadline is None else deadline - reserve,
        prefix=outcome.prefixes.for_candidate(final_candidate) if outcome.prefixes else None,
    )
    say(
        f"final fit on {len(pool)} images, epochs={final_candidate.config.epochs} "
        f"({time.monotonic() - fit_started:.1f} s)"
    )

    final = MeanLogits([final_net, *(r.model for r in outcome.cv.results)]).eval()
    oof = outcome.cv.oof_logits(len(pool), len(pool.label_names))
    cv_temperature = fit_temperature(oof, pool.labels)
    cv_metrics = evaluation_metrics(
        softmax(oof, cv_temperature),
        pool.labels,
        pool.label_names,
        f"{request.folds}-fold CV on {len(pool)} images",
        accuracy_std=outcome.cv.accuracy_std(pool.labels),
    )
    heldout_logits = predict_logits(final, holdout.images, IMAGENET_NORMALISATION)
    raw = evaluation_metrics(
        softmax(heldout_logits), holdout.labels, holdout.label_names, "held-out"
    )
    if len(holdout) >= MIN_CALIBRATION_IMAGES:
        temperature = fit_temperature(heldout_logits, holdout.labels)
        calibrated = cross_fitted_probabilities(heldout_logits, holdout.labels, request.seed)
    else:
        temperature = cv_temperature
        calibrated = softmax(heldout_logits, temperature)
    heldout = evaluation_metrics(
        calibrated, holdout.labels, holdout.label_names, f"{len(holdout)} held-out images"
    )
    say(
        f"held-out accuracy {heldout.accuracy:.4f} {heldout.per_class_accuracy}, "
        f"ECE {heldout.ece:.4f}"
    )

    domain = fit_domain(
        final, IMAGENET_NORMALISATION, pool.images, pool.labels, holdout.images, seed=request.seed
    )
    say(f"domain threshold {domain.threshold:.3g} ({domain.coverage:.1%} of held-out under it)")
    version = registry.next_version(request.model)
    model_bytes = export_torchscript(DomainScored(final, domain), INPUT_SIZE)
    card = build_card(
        name=request.model,
        version=version,
        net=final,
        model_bytes=model_bytes,
        labels=pool.label_names,
        architecture=f"mean of {len(final.nets)} x {outcome.winner.describe()} with flip TTA",
        preprocessing=spec,
        calibration=Calibration(temperature=temperature, ece_before=raw.ece, ece_after=heldout.ece),
        training=_training_info(request, pool, report, outcome, started),
        metrics={"heldout": heldout, "cv": cv_metrics},
        domain=domain_summary(
            pool.sources,
            domain,
            f"{len(pool)} labelled images from {request.source}",
        )
        if pool.sources
        else None,
    )
    card_uri = registry.publish(card, model_bytes)
    model_id = ModelId(name=request.model, version=version)
    base = registry.version_uri(registry.primary_root, model_id)
    report_uri = write_training_report(
        _oof_results(pool, oof, cv_temperature, model_id),
        storage,
        join_uri(base, "report.html"),
        f"{request.model}@{version}: {request.folds}-fold cross-validation",
        limits=limits,
        max_thumbnails=300,
    )
    write_heldout_predictions(
        _labelled_results(holdout, calibrated, model_id), storage, join_uri(base, HELDOUT_NAME)
    )
    promoted, reason, production_accuracy = _gate(
        registry, model_id, heldout, holdout, request.promotion, settings
    )
    if promoted:
        registry.promote(model_id)
    say(f"published {request.model}@{version}: {reason}")
    return RetrainSummary(
        job_id=request.job_id,
        status="succeeded",
        model=model_id,
        promoted=promoted,
        decision=reason,
        heldout_accuracy=heldout.accuracy,
        production_accuracy=production_accuracy,
        card_uri=card_uri,
        report_uri=report_uri,
        duration_s=round(time.monotonic() - started, 2),
    )


def _holdout(
    data: LabelledImages, request: RetrainRequest, spec: Preprocessing, limits: ImageLimits
) -> tuple[LabelledImages, LabelledImages]:
    if request.holdout_items is None:
        keep, held = stratified_split(data.labels, request.holdout_share, request.seed)
        return data.subset(keep), data.subset(held)
    holdout, _ = load_labelled_images(request.holdout_items(), spec, limits)
    if holdout.label_names != data.label_names:
        raise ModelError(f"held-out labels {holdout.label_names} differ from {data.label_names}")
    return data, holdout


def _gate(
    registry: ModelRegistry,
    candidate: ModelId,
    metrics: EvaluationMetrics,
    holdout: LabelledImages,
    policy: PromotionPolicy,
    settings: Settings,
) -> tuple[bool, str, float | None]:
    """Promote, or keep as a candidate, and say why (production scored on the same images)."""
    if policy.mode == "never":
        return (*promotion_decision(metrics.accuracy, None, policy), None)
    try:
        production = registry.resolve(ModelRef(name=candidate.name))
    except ModelError:
        return (*promotion_decision(metrics.accuracy, None, policy), None)
    card, data = registry.read_model(production)
    if card.labels != holdout.label_names or card.preprocessing.input_size != INPUT_SIZE:
        return (
            policy.mode == "always",
            (
                f"production {production.version} has other labels or input size; "
                + (
                    "promoted by policy 'always'"
                    if policy.mode == "always"
                    else "kept as a candidate"
                )
            ),
            None,
        )
    model = load_model(card, data, select_device(settings.device))
    probs = np.concatenate(
        [model.predict_proba(holdout.images[i : i + 64]) for i in range(0, len(holdout), 64)]
    )
    production_accuracy = float((probs.argmax(1) == holdout.labels).mean())
    promoted, reason = promotion_decision(
        metrics.accuracy, production_accuracy, policy, production_version=production.version
    )
    return promoted, reason, production_accuracy


def promotion_decision(
    candidate_accuracy: float,
    production_accuracy: float | None,
    policy: PromotionPolicy,
    production_version: str | None = None,
) -> tuple[bool, str]:
    """Whether a candidate takes the ``production`` alias, and a sentence saying why.

    ``production_accuracy`` is production's accuracy on the candidate's held-out
    images, or None when there is no production version to compare with. The
    reason names both accuracies and the margin whenever there was a comparison.
    Accuracies that differ by float rounding only count as equal.
    """
    if policy.mode == "never":
        return False, "kept as a candidate: the promotion policy is 'never'"
    if production_accuracy is None:
        return True, "promoted: there was no production version yet"
    production = f"production {production_version}" if production_version else "production"
    comparison = (
        f"held-out accuracy {candidate_accuracy:.4f} vs {production} "
        f"{production_accuracy:.4f} (margin {policy.margin})"
    )
    if policy.mode == "always":
        return True, f"promoted by policy 'always': {comparison}"
    if candidate_accuracy + _ROUNDING >= production_accuracy - policy.margin:
        return True, f"promoted: {comparison}"
    return False, f"kept as a candidate, worse than production: {comparison}"


def _oof_results(
    pool: LabelledImages, oof: np.ndarray, temperature: float, model: ModelId
) -> list[ImageResult]:
    return _labelled_results(pool, softmax(oof, temperature), model)


def _labelled_results(data: LabelledImages, probs: np.ndarray, model: ModelId) -> list[ImageResult]:
    """One result per image of ``data`` from its class probabilities, true label set."""
    names = data.label_names
    return [
        ImageResult(
            uri=uri,
            label=names[int(row.argmax())],
            confidence=float(row.max()),
            scores={n: float(p) for n, p in zip(names, row, strict=True)},
            model=model,
            true_label=names[int(k)],
        )
        for uri, row, k in zip(data.uris, probs, data.labels, strict=True)
    ]


def write_heldout_predictions(results: list[ImageResult], storage: Storage, uri: str) -> None:
    """Store the held-out images' calibrated predictions as JSON Lines next to the card.

    The card keeps the held-out accuracy and ECE; these rows let a reader draw the
    confusion matrix and reliability diagram behind them (the console's Train page,
    ``synthdetect review <version folder>/heldout-predictions.jsonl``).
    """
    body = "".join(r.model_dump_json(exclude_none=True) + "\n" for r in results)
    storage.put_bytes(uri, body.encode(), content_type="application/x-ndjson")


def _training_info(
    request: RetrainRequest,
    pool: LabelledImages,
    report: LoadReport,
    outcome: SearchOutcome,
    started: float,
) -> TrainingInfo:
    winner = outcome.winner
    return TrainingInfo(
        data=data_summary(pool, request.source, report),
        start=winner.start,
        recipe=(
            f"budgeted search ({len(outcome.trials)} candidates screened on fold 0), "
            f"{request.folds}-fold CV, final fit, mean of final + fold models with flip TTA, "
            "temperature scaling on held-out logits (out-of-fold logits below "
            f"{MIN_CALIBRATION_IMAGES} held-out images), cross-fitted held-out ECE"
        ),
        hyperparameters={
            "winner": winner.describe(),
            "config": winner.config.as_dict(),
            "net": winner.net.as_dict() if winner.net else None,
            "trials": [
                {
                    "candidate": t.candidate.describe(),
                    "epochs": t.candidate.config.epochs,
                    "fold0_accuracy": round(t.fold0_accuracy, 4),
                    "seconds": round(t.seconds, 1),
                }
                for t in outcome.trials
            ],
            "budget": request.budget.model_dump(),
            "unit_s": outcome.unit_s,
        },
        seed=request.seed,
        duration_s=round(time.monotonic() - started, 1),
        device="cpu",
    )
