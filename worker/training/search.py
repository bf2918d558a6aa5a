"""Budgeted hyper-parameter search with k-fold cross-validation.

The user gives a budget (seconds, trials, or both), never a learning rate:

1. Every candidate family's training speed is probed on this machine.
2. The time left is cut into equal *units*: one unit trains a model on the
   whole training pool, so one CV fold costs (k-1)/k units. The plan needs
   ``screened x (k-1)/k`` units to screen candidates on fold 0,
   ``(k-1) x (k-1)/k`` more for the winner's remaining folds, and 1 for the
   final fit; each candidate's epochs are what its speed allows in a unit.
3. Families that would get too few epochs in a unit are dropped (an ImageNet
   backbone needs a few epochs to adapt; a scratch CNN needs more), so a
   60 s budget searches scratch CNNs and a 5 min one can afford fine-tuning.
4. Candidates are screened on fold 0 in order of prior merit; the best one
   completes k-fold CV (its fold 0 is reused) and is fitted on all the data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from contracts import Budget
from worker.logs import get_logger
from worker.training.candidates import Candidate, search_space, speed_of
from worker.training.crossval import CrossValidation, FoldResult, run_fold
from worker.training.dataset import LabelledImages
from worker.training.splits import stratified_folds

log = get_logger(__name__)

MIN_EPOCHS = {"lite0": 3.0, "synthnet": 8.0}
"""Below these a family is not worth its unit of time (measured on CIFAKE subsets)."""
DEFAULT_EPOCHS = {"lite0": 8.0, "synthnet": 30.0}
"""Epochs per fit when only a trial count limits the search."""
MAX_EPOCHS = {"lite0": 15.0, "synthnet": 60.0}
"""Beyond these more epochs stopped helping in our measurements; spare time is left unused."""
DEFAULT_SCREENED = 3


@dataclass
class Trial:
    """One screened candidate: what it was and how it did on fold 0."""

    candidate: Candidate
    fold0_accuracy: float
    seconds: float


@dataclass
class SearchOutcome:
    """The winner with its complete cross-validation, and what else was tried."""

    winner: Candidate
    cv: CrossValidation
    trials: list[Trial]
    unit_s: float | None
    screened: list[str] = field(default_factory=list)


def plan_epochs(candidate: Candidate, unit_s: float | None, n_train: int) -> float | None:
    """Epochs a unit of time buys this candidate; None if the family is not worth it."""
    if unit_s is None:
        return DEFAULT_EPOCHS[candidate.family]
    epochs = unit_s * speed_of(candidate) / max(n_train, 1)
    if epochs < MIN_EPOCHS[candidate.family]:
        return None
    return min(epochs, MAX_EPOCHS[candidate.family])


def search(
    data: LabelledImages,
    budget: Budget,
    folds: int,
    seed: int,
    *,
    deadline: float | None,
    reserve_s: float = 0.0,
    on_progress: Callable[[str], None] | None = None,
) -> SearchOutcome:
    """Screen candidates, cross-validate the best, leave time for one final fit."""
    say = on_progress or (lambda message: None)
    fold_indices = stratified_folds(data.labels, folds, seed)
    space = search_space(seed)
    if deadline is not None:
        for candidate in space:
            speed_of(candidate)  # probe first: the plan below divides only the time left
    screened_count = min(budget.trials or DEFAULT_SCREENED, len(space))
    units = screened_count * (folds - 1) / folds + (folds - 1) * (folds - 1) / folds + 1
    unit_s = None
    fold_deadline = None
    if deadline is not None:
        unit_s = max(0.0, deadline - time.monotonic() - reserve_s) / units
        fold_deadline = deadline - reserve_s - unit_s  # the final fit's unit stays free
    planned = []
    for candidate in space:
        epochs = plan_epochs(candidate, unit_s, len(data))
        if epochs is not None:
            planned.append(candidate.with_epochs(round(epochs, 1), seed))
    if not planned:  # even the fastest family is short of time: give it what there is
        fastest = max(space, key=speed_of)
        epochs = max(1.0, (unit_s or 0) * speed_of(fastest) / max(len(data), 1))
        planned = [fastest.with_epochs(round(epochs, 1), seed)]
    planned = planned[:screened_count]
    say(f"search: {len(planned)} candidates, unit {unit_s or 0:.1f} s, {folds}-fold CV")

    trials: list[Trial] = []
    fold0: dict[int, FoldResult] = {}
    for i, candidate in enumerate(planned):
        result = run_fold(candidate, data, fold_indices, 0, deadline=fold_deadline)
        fold0[i] = result
        accuracy = result.accuracy(data.labels)
        trials.append(Trial(candidate, accuracy, result.seconds))
        say(
            f"screen {i + 1}/{len(planned)}: {candidate.describe()} "
            f"epochs={candidate.config.epochs} fold-0 accuracy {accuracy:.4f} "
            f"({result.seconds:.1f} s)"
        )
    best = max(range(len(planned)), key=lambda i: (trials[i].fold0_accuracy, -i))
    winner = planned[best]
    cv = CrossValidation(winner, fold_indices, [fold0[best]])
    for index in range(1, folds):
        result = run_fold(winner, data, fold_indices, index, deadline=fold_deadline)
        cv.results.append(result)
        say(
            f"cv fold {index + 1}/{folds}: accuracy {result.accuracy(data.labels):.4f} "
            f"({result.seconds:.1f} s)"
        )
    log.info("search_done", winner=winner.describe(), cv_accuracy=cv.mean_accuracy(data.labels))
    return SearchOutcome(winner, cv, trials, unit_s, [c.describe() for c in planned])
