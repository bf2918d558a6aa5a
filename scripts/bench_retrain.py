"""Accuracy against budget of the whole retrain, on CIFAKE, side by side in one run.

    python scripts/bench_retrain.py        # 1,000 + 1,000 images, budgets 60 s and 5 min
    python scripts/bench_retrain.py --per-class 1000 --budgets 30,60,120,300
    python scripts/bench_retrain.py --per-class 0 --budgets 7200   # all of dev-train.tar
    python scripts/bench_retrain.py --holdout-per-class 200   # all 2,000 train, 400 more held out

For each budget: a fresh retrain (search + k-fold CV + final fit + export +
report, exactly ``synthdetect train``) on a seeded sample of ``dev-train.tar``
that starts from scratch or from ImageNet weights (never from a model that has
seen CIFAKE), into a throw-away registry; the retrain holds out a fifth of the
sample, or with ``--holdout-per-class`` takes its held-out set (a held-out prefix, as a
``RetrainJob`` may name one) from other images of ``dev-train.tar`` and trains on the
whole sample. Then the published model is scored
on all of ``dev-test.tar``. Prints one row per budget: wall time, what the
search chose, CV accuracy, dev-test accuracy per class and ECE.
"""

from __future__ import annotations

import argparse
import json
import random
import tarfile
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from contracts import Budget, PromotionPolicy
from worker.classify.inputs import InputItem, expand_paths
from worker.imaging import ImageLimits
from worker.inference.device import select_device
from worker.inference.model import load_model
from worker.inference.registry import ModelRegistry
from worker.retrain.run import RetrainRequest, run_retrain
from worker.retrain.training.dataset import load_labelled_images
from worker.review.evaluation import evaluation_metrics
from worker.settings import Settings
from worker.storage import Storage

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake"
FOLDERS = {"REAL": "real", "FAKE": "synthetic"}


def sample_dataset(
    tar: Path, per_class: int, seed: int, target: Path, *, besides: Path | None = None
) -> Path:
    """Copy ``per_class`` images of each class (0 = all) into ``target/<label>/``.

    ``besides``: a folder sampled before, whose images are left out (a held-out set
    disjoint from the training sample).
    """
    with tarfile.open(tar) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
        rng = random.Random(seed)
        for source, label in FOLDERS.items():
            taken = {p.name for p in (besides / label).iterdir()} if besides else set()
            chosen = [
                m
                for m in members
                if m.name.startswith(source + "/") and Path(m.name).name not in taken
            ]
            if per_class:
                chosen = rng.sample(chosen, per_class)
            (target / label).mkdir(parents=True, exist_ok=True)
            for member in chosen:
                file = archive.extractfile(member)
                assert file is not None, f"{member.name} is not a regular file"
                data = file.read()
                (target / label / Path(member.name).name).write_bytes(data)
    return target


def _print_progress(budget: float, started: float, message: str) -> None:
    print(f"  [{budget:g} s budget, at {time.monotonic() - started:5.1f} s] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=1000, help="0 = all of dev-train.tar")
    parser.add_argument("--budgets", default="60,300", help="seconds, comma-separated")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--holdout-per-class",
        type=int,
        default=0,
        help="held-out images per class from the rest of dev-train.tar; 0 = carve the "
        "held-out split out of the training sample (the default retrain)",
    )
    args = parser.parse_args()
    settings = Settings()
    storage = Storage.from_settings(settings)
    limits = ImageLimits.from_settings(settings)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_dir = sample_dataset(DATA / "dev-train.tar", args.per_class, args.seed, root / "data")
        holdout_dir = None
        if args.holdout_per_class:
            holdout_dir = sample_dataset(
                DATA / "dev-train.tar",
                args.holdout_per_class,
                args.seed + 1,
                root / "holdout",
                besides=train_dir,
            )
        test_items = expand_paths(
            [str(DATA / "dev-test.tar")],
            storage,
            settings.max_image_bytes,
            labels_from_folders=True,
        )

        def folder_items(folder: Path) -> Iterator[InputItem]:
            return expand_paths(
                [str(folder)], storage, settings.max_image_bytes, labels_from_folders=True
            )

        rows: list[dict[str, Any]] = []
        for budget in (float(b) for b in args.budgets.split(",")):
            registry = ModelRegistry(storage, [str(root / f"registry-{budget:g}")])
            request = RetrainRequest(
                model="bench",
                source=f"dev-train.tar sample ({args.per_class} per class)",
                items=partial(folder_items, train_dir),
                holdout_items=None if holdout_dir is None else partial(folder_items, holdout_dir),
                budget=Budget(seconds=budget),
                folds=args.folds,
                promotion=PromotionPolicy(mode="always"),
                seed=args.seed,
                job_id="bench",
            )
            started = time.monotonic()
            summary = run_retrain(
                request,
                settings,
                storage,
                registry,
                on_progress=partial(_print_progress, budget, started),
            )
            wall = time.monotonic() - started
            assert summary.model is not None
            card, model_bytes = registry.read_model(summary.model)
            model = load_model(card, model_bytes, select_device("cpu"))
            if not rows:
                test, _ = load_labelled_images(
                    test_items, card.preprocessing, limits, label_aliases={"fake": "synthetic"}
                )
            probs = np.concatenate(
                [model.predict_proba(test.images[i : i + 64]) for i in range(0, len(test), 64)]
            )
            index = [card.labels.index(name) for name in test.label_names]
            metrics = evaluation_metrics(probs[:, index], test.labels, test.label_names, "dev-test")
            row = {
                "budget_s": budget,
                "wall_s": round(wall, 1),
                "winner": card.training.hyperparameters["winner"] if card.training else None,
                "cv_accuracy": round(card.metrics["cv"].accuracy, 4),
                "dev_test_accuracy": round(metrics.accuracy, 4),
                "per_class": {k: round(v, 4) for k, v in metrics.per_class_accuracy.items()},
                "ece": round(metrics.ece or 0, 4),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| budget | wall | search chose | CV acc. | dev-test acc. | real | synthetic | ECE |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        pc = r["per_class"]
        print(
            f"| {r['budget_s']:g} s | {r['wall_s']:.0f} s | {r['winner']} | {r['cv_accuracy']:.2%} "
            f"| {r['dev_test_accuracy']:.2%} | {pc.get('real', 0):.2%} "
            f"| {pc.get('synthetic', 0):.2%} "
            f"| {r['ece']:.2%} |"
        )


if __name__ == "__main__":
    main()
