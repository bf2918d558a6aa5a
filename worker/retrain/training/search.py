"""Budgeted hyper-parameter search with k-fold cross-validation.

The user gives a budget (seconds, trials, or both), never a learning rate:

1. Every candidate family's training speed is probed on this machine.
2. The time left is cut into equal *units*: one unit trains a model on the
   whole training pool, so one CV fold costs (k-1)/k units. The plan needs
   ``screened x (k-1)/k`` units to screen candidates on fold 0,
   ``(k-1) x (k-1)/k`` more for the winner's remaining folds, and 1 for the
   final fit; each candidate's epochs are what its speed allows in a unit.
3. Families that would get too few epochs in a unit are dropped (an ImageNet
   backbone needs a few epochs to adapt; a scratch CNN needs more), so the
   smallest budgets search truncated backbones and scratch CNNs and larger
   ones can afford the whole backbone.
4. Candidates are screened on fold 0 in order of prior merit; the best one
   completes k-fold CV (its fold 0 is reused) and is fitted on all the data.
   Small data sets (folds under ``MIN_SCREEN_FOLD`` images) screen only the
   first candidate, since their fold-0 accuracies are too noisy to rank.
5. The plan is re-made before every run from the time actually left and the
   speed runs actually had (a ``Pace``): a run that would not fit gets fewer
   epochs with a complete schedule, instead of being cut off at the deadline
   half-way through its learning-rate schedule; after screening, a run that
   finds more time than planned gets more epochs, so no budget is left unused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from contracts import Budget
from worker.logs import get_logger
from worker.retrain.training.candidates import (
    IMAGENET_NORMALISATION,
    Candidate,
    forget_probed_speeds,
    scoring_speed_of,
    search_space,
    speed_of,
)
from worker.retrain.training.crossval import CrossValidation, FoldResult, run_fold
from worker.retrain.training.dataset import LabelledImages
from worker.retrain.training.frozen import PrefixCache, Splittable
from worker.retrain.training.splits import stratified_folds

log = get_logger(__name__)

MIN_EPOCHS = {"lite0": 3.0, "synthnet": 8.0}
"""Below these a family is not worth its unit of time (measured on CIFAKE subsets)."""
DEFAULT_EPOCHS = {"lite0": 8.0, "synthnet": 30.0}
"""Epochs per fit when only a trial count limits the search."""
MAX_EPOCHS = {"lite0": 40.0, "synthnet": 60.0}
"""Beyond these more epochs stopped helping in our measurements; spare time is left unused."""
DEFAULT_SCREENED = 2
"""Each screen costs most of a unit; two leave the winner's folds more epochs than three."""
MIN_SCREEN_FOLD = 1000
"""Fold-0 screens need this many validation images to tell candidates apart: on fewer
(e.g. 320 of 1,600) the standard error of an accuracy near 93 % is 1.4 points, more
than the gaps between our candidates, so the time goes to the first candidate instead."""


def screened_count(budget: Budget, folds: int, n_train: int, space_size: int) -> int:
    """How many candidates to screen: the trials asked for, else as many as can be told apart."""
    if budget.trials:
        return min(budget.trials, space_size)
    if n_train / folds < MIN_SCREEN_FOLD:
        return 1
    return min(DEFAULT_SCREENED, space_size)


@dataclass
class Trial:
    """One screened candidate: what it was and how it did on fold 0."""

    candidate: Candidate
    fold0_accuracy: float
    seconds: float


PRIOR_CORRECTION = 1.1
"""How much slower than probed the first run is assumed to go (1.05-1.15 measured here).
Assuming the probe's speed made every later run of a 60 s retrain shrink by 10 %."""
GROWTH_MIN = 1.1
"""A run gets more epochs only when at least this many times its plan now fits."""


@dataclass
class Pace:
    """Training speed here: the probe's figure, corrected by what finished runs took.

    Probes time a few bare steps; real runs also augment, shuffle, recompute
    BatchNorm statistics and predict their validation fold, so they go slower
    than probed. Until a run has finished, ``prior`` stands in for the
    correction; after that each finished run updates it, and every later plan
    uses it.
    """

    deadline: float | None
    reserve_s: float = 0.0
    """Seconds kept back after training whatever the model (export, report, gate)."""
    scored_images: int = 0
    """Forward passes the finished model makes after training (held-out images x views x
    members): their time is kept back too, at the speed of the model being planned."""
    prior: float = 1.0
    probed_s: float = 0.0
    """Seconds the finished runs would have taken at their probed speeds."""
    taken_s: float = 0.0
    """Seconds they took."""
    scoring_rate: float | None = None
    """Forward passes per second the finished runs' validation predictions made."""

    @property
    def correction(self) -> float:
        """How much slower than probed runs go (cumulative, so one noisy run moves it little)."""
        return self.taken_s / self.probed_s if self.probed_s > 0 else self.prior

    def images_per_s(self, candidate: Candidate) -> float:
        return speed_of(candidate) / self.correction

    def record(self, candidate: Candidate, images_trained: float, seconds: float) -> None:
        if images_trained > 0 and seconds > 0:
            self.probed_s += images_trained / speed_of(candidate)
            self.taken_s += seconds

    def record_scoring(self, forward_passes: int, seconds: float) -> None:
        if forward_passes > 0 and seconds > 0:
            self.scoring_rate = forward_passes / seconds

    def reserve_for(self, candidate: Candidate) -> float:
        """Seconds to keep back after training ``candidate``'s runs.

        Scoring goes at the rate the last validation predictions had; before
        any, at the rate a probe of the whole network measures (a frozen
        prefix trains faster but scores no faster).
        """
        if not self.scored_images:
            return self.reserve_s
        rate = self.scoring_rate or scoring_speed_of(candidate)
        return self.reserve_s + self.scored_images / rate

    def seconds_left(self, candidate: Candidate) -> float | None:
        """Training time left for ``candidate`` before its reserve; None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic() - self.reserve_for(candidate))

    def affordable_epochs(
        self, candidate: Candidate, units_left: float, n_train: int
    ) -> float | None:
        """Epochs of one unit out of ``units_left`` in the time left; None without a deadline."""
        left = self.seconds_left(candidate)
        if left is None:
            return None
        return left / max(units_left, 1e-9) * self.images_per_s(candidate) / max(n_train, 1)

    def fit(
        self, candidate: Candidate, units_left: float, n_train: int, *, grow: bool = False
    ) -> Candidate:
        """``candidate`` with the epochs that fit its share of the time left.

        Fewer epochs (at least one) when its planned ones no longer fit; with
        ``grow``, more (up to the family's ``MAX_EPOCHS``) when runs went faster
        than planned. Screening runs do not grow, so they stay comparable.
        """
        affordable = self.affordable_epochs(candidate, units_left, n_train)
        planned = candidate.config.epochs
        if affordable is None:
            return candidate
        ceiling = max(planned, MAX_EPOCHS[candidate.family])
        if affordable < planned:
            epochs = max(1.0, affordable)
        elif grow and affordable >= planned * GROWTH_MIN and planned < ceiling:
            epochs = min(affordable, ceiling)
        else:
            return candidate
        return candidate.with_epochs(round(epochs, 1), candidate.config.seed, n_train)


@dataclass
class PrefixCaches:
    """Frozen-prefix features of the training pool, one cache per prefix depth, built once.

    Every run of a candidate with a frozen prefix (each fold, the final fit)
    takes its rows of the same cache. Its BatchNorm statistics come from the
    whole pool, so a fold's validation images contribute their (unlabelled)
    pixel statistics to its frozen layers; the held-out images never do.
    """

    images: np.ndarray
    built: dict[int, PrefixCache] = field(default_factory=dict)

    def for_candidate(self, candidate: Candidate) -> PrefixCache | None:
        blocks = candidate.config.frozen_blocks
        if not blocks:
            return None
        if blocks not in self.built:
            net = candidate.build(2)
            if not isinstance(net, Splittable):
                raise ValueError(f"{candidate.describe()} cannot freeze a prefix")
            normalise = IMAGENET_NORMALISATION.apply
            self.built[blocks] = PrefixCache.build(net, self.images, normalise, blocks)
        return self.built[blocks]


@dataclass
class SearchOutcome:
    """The winner with its complete cross-validation, and what else was tried."""

    winner: Candidate
    cv: CrossValidation
    trials: list[Trial]
    unit_s: float | None
    screened: list[str] = field(default_factory=list)
    pace: Pace | None = None
    prefixes: PrefixCaches | None = None

    def final_candidate(self, n_train: int) -> Candidate:
        """The winner as the final fit on ``n_train`` images runs it, in the time left."""
        if self.pace is None:
            return self.winner
        return self.pace.fit(self.winner, 1.0, n_train, grow=True)


def plan_epochs(candidate: Candidate, unit_s: float | None, n_train: int) -> float | None:
    """Epochs a unit of time buys this candidate; None if the family is not worth it."""
    if unit_s is None:
        return DEFAULT_EPOCHS[candidate.family]
    epochs = unit_s * speed_of(candidate) / max(n_train, 1)
    if epochs < (candidate.min_epochs or MIN_EPOCHS[candidate.family]):
        return None
    return min(epochs, MAX_EPOCHS[candidate.family])


def plan_units(screened: int, folds: int) -> float:
    """Units of time a search of ``screened`` candidates and the final fit need."""
    fold_share = (folds - 1) / folds
    return screened * fold_share + (folds - 1) * fold_share + 1


def plan_candidates(
    space: list[Candidate], wanted: int, folds: int, n_train: int, pace: Pace, seed: int
) -> tuple[list[Candidate], float | None]:
    """Up to ``wanted`` candidates worth their unit, with epochs, and the unit's length.

    Planned twice: when fewer candidates are worth screening than wanted, the
    time of the missing screens goes to the ones that remain. Empty when none
    is worth its unit.
    """
    unit_s = None
    planned: list[Candidate] = []
    count = wanted
    for _ in range(2):
        left = pace.seconds_left(space[0])
        if left is not None:
            unit_s = left / plan_units(count, folds)
        planned = []
        for candidate in space:
            epochs = plan_epochs(candidate, unit_s, n_train)
            if epochs is not None:
                planned.append(candidate.with_epochs(round(epochs, 1), seed, n_train))
        planned = planned[:wanted]
        if not planned or len(planned) == count:
            break
        count = len(planned)
    return planned, unit_s


def plan_search(
    space: list[Candidate], wanted: int, folds: int, n_train: int, pace: Pace, seed: int
) -> tuple[list[Candidate], float | None]:
    """``plan_candidates`` over as few candidates as need probing, in order of merit.

    A probe costs 0.5-2 s (it loads weights and warms up), which a 60 s budget
    cannot spare for candidates it will not train: probing stops as soon as
    ``wanted`` candidates are worth their unit.
    """
    planned: list[Candidate] = []
    unit_s: float | None = None
    for count in range(1, len(space) + 1):
        planned, unit_s = plan_candidates(space[:count], wanted, folds, n_train, pace, seed)
        if len(planned) >= wanted:
            return planned, unit_s
    if planned:
        return planned, unit_s
    # even the fastest family is short of time: give it what there is
    fastest = max(space, key=speed_of)
    epochs = max(1.0, (unit_s or 0) * speed_of(fastest) / max(n_train, 1))
    return [fastest.with_epochs(round(epochs, 1), seed, n_train)], unit_s


def search(
    data: LabelledImages,
    budget: Budget,
    folds: int,
    seed: int,
    *,
    deadline: float | None,
    reserve_s: float = 0.0,
    scored_images: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> SearchOutcome:
    """Screen candidates, cross-validate the best, leave time for one final fit."""
    say = on_progress or (lambda message: None)
    forget_probed_speeds()  # this machine's speed now, not when an earlier retrain ran
    fold_indices = stratified_folds(data.labels, folds, seed)
    space = search_space(seed, len(data))
    pace = Pace(deadline, reserve_s, scored_images, prior=PRIOR_CORRECTION)
    wanted = screened_count(budget, folds, len(data), len(space))
    planned, unit_s = plan_search(space, wanted, folds, len(data), pace, seed)
    say(f"search: {len(planned)} candidates, unit {unit_s or 0:.1f} s, {folds}-fold CV")
    fold_share = (folds - 1) / folds
    fold_train = len(data) * fold_share
    prefixes = PrefixCaches(data.images)

    def train_fold(
        candidate: Candidate, index: int, units_left: float, grow: bool = False
    ) -> FoldResult:
        prefix = prefixes.for_candidate(candidate)  # built before planning the run's epochs
        candidate = pace.fit(candidate, units_left, len(data), grow=grow)
        result = run_fold(
            candidate, data, fold_indices, index, deadline=pace.deadline, prefix=prefix
        )
        pace.record(candidate, candidate.config.epochs * fold_train, result.seconds)
        pace.record_scoring(2 * len(result.validation), result.predict_seconds)
        return result

    trials: list[Trial] = []
    fold0: dict[int, FoldResult] = {}
    for i, candidate in enumerate(planned):
        units_left = plan_units(len(planned) - i, folds)
        result = train_fold(candidate, 0, units_left)
        fold0[i] = result
        accuracy = result.accuracy(data.labels)
        trials.append(Trial(result.candidate, accuracy, result.seconds))
        say(
            f"screen {i + 1}/{len(planned)}: {result.candidate.describe()} "
            f"epochs={result.candidate.config.epochs} fold-0 accuracy {accuracy:.4f} "
            f"({result.seconds:.1f} s)"
        )
    best = max(range(len(planned)), key=lambda i: (trials[i].fold0_accuracy, -i))
    winner = trials[best].candidate  # as it ran on fold 0; later runs may grow or shrink
    cv = CrossValidation(winner, fold_indices, [fold0[best]])
    for index in range(1, folds):
        units_left = (folds - index) * fold_share + 1
        result = train_fold(winner, index, units_left, grow=True)
        cv.results.append(result)
        say(
            f"cv fold {index + 1}/{folds}: accuracy {result.accuracy(data.labels):.4f} "
            f"epochs={result.candidate.config.epochs} ({result.seconds:.1f} s)"
        )
    log.info("search_done", winner=winner.describe(), cv_accuracy=cv.mean_accuracy(data.labels))
    return SearchOutcome(
        winner, cv, trials, unit_s, [c.describe() for c in planned], pace, prefixes
    )
