"""One network per training recipe, side by side: what the search's choices rest on.

    python scripts/bench_recipes.py                       # the default comparison below
    python scripts/bench_recipes.py --runs "3:base,3:lr=3e-3,3:batch_size=32" --seeds 1,2,3
    python scripts/bench_recipes.py --runs "25:translate=4,25:translate=4+mixup_alpha=0.4"

Each run is ``EPOCHS:CHANGES``: a search candidate (``--candidate``; by default
the first, Lite0 cut after block 8 with its neck, ImageNet start) trained for
EPOCHS on fold 0 of the training pool a retrain would use (a seeded 1,000 +
1,000 sample of ``dev-train.tar``, 400 held out, 5 folds: 1,280 images), with
``CHANGES`` (``field=value`` of ``TrainConfig``, joined by ``+``; ``base`` for
none) applied on top of what the search would set. Prints the training time,
fold-0 accuracy and accuracy with flip TTA on a fixed
subset of ``dev-test.tar``, one JSON line per run and seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from worker.classify.inputs import expand_paths
from worker.imaging import ImageLimits
from worker.retrain.run import preprocessing
from worker.retrain.training.candidates import IMAGENET_NORMALISATION, search_space
from worker.retrain.training.dataset import LabelledImages, load_labelled_images
from worker.retrain.training.loop import TrainConfig, predict_logits, train_classifier
from worker.retrain.training.splits import stratified_folds, stratified_split
from worker.settings import Settings
from worker.storage import Storage

if TYPE_CHECKING:  # mypy checks scripts/ as the package it is
    from scripts.bench_retrain import DATA, sample_dataset
else:  # run as `python scripts/bench_recipes.py`: its folder is on sys.path
    from bench_retrain import DATA, sample_dataset

DEFAULT_RUNS = (
    "3:base,3:lr=1e-3,3:lr=3e-3,3:batch_size=32,3:warmup_share=0.1,"
    "5:base,8:base,25:translate=2+mixup_alpha=0,25:mixup_alpha=0,25:base"
)


def parse_changes(text: str) -> dict[str, object]:
    """``lr=3e-3+translate=4`` -> {"lr": 0.003, "translate": 4}, typed like ``TrainConfig``."""
    if text == "base":
        return {}
    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    changes: dict[str, object] = {}
    for part in text.split("+"):
        key, value = part.split("=", 1)
        kind = types[key]
        changes[key] = value.lower() in ("1", "true") if kind is bool else kind(value)
    return changes


def load(path: Path, limits: ImageLimits, storage: Storage, settings: Settings) -> LabelledImages:
    spec = preprocessing()  # what a retrain decodes with
    items = expand_paths([str(path)], storage, settings.max_image_bytes, labels_from_folders=True)
    data, _ = load_labelled_images(items, spec, limits, label_aliases={"fake": "synthetic"})
    return data


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(float((logits.argmax(1) == labels).mean()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default=DEFAULT_RUNS)
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--test-images", type=int, default=5000)
    parser.add_argument(
        "--candidate",
        type=int,
        default=0,
        help="which small-set search candidate the changes apply to (0: the whole cut after "
        "block 8 with its neck, 1: three blocks frozen, 2: five blocks frozen)",
    )
    args = parser.parse_args()
    settings = Settings()
    storage = Storage.from_settings(settings)
    limits = ImageLimits.from_settings(settings)
    test = load(DATA / "dev-test.tar", limits, storage, settings)
    chosen = np.random.default_rng(0).permutation(len(test))[: args.test_images]
    test = test.subset(np.sort(chosen))
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            folder = sample_dataset(DATA / "dev-train.tar", 1000, seed, Path(tmp))
            data = load(folder, limits, storage, settings)
        keep, _ = stratified_split(data.labels, 0.2, seed)
        pool = data.subset(keep)
        if pool.label_names != test.label_names:
            raise SystemExit(f"labels differ: {pool.label_names} vs {test.label_names}")
        validation = stratified_folds(pool.labels, 5, seed)[0]
        train = pool.subset(np.setdiff1d(np.arange(len(pool)), validation))
        for run in args.runs.split(","):
            epochs, changes = run.split(":", 1)
            candidate = search_space(seed, len(train))[args.candidate].with_epochs(
                float(epochs), seed, len(train)
            )
            config = replace(candidate.config, **parse_changes(changes))
            net = candidate.build(len(pool.label_names))
            started = time.perf_counter()
            train_classifier(net, train.images, train.labels, IMAGENET_NORMALISATION, config)
            seconds = time.perf_counter() - started
            fold0 = predict_logits(net, pool.images[validation], IMAGENET_NORMALISATION)
            scored = predict_logits(net, test.images, IMAGENET_NORMALISATION, flip_tta=True)
            row = {
                "run": run,
                "seed": seed,
                "train_s": round(seconds, 1),
                "fold0_accuracy": accuracy(fold0, pool.labels[validation]),
                "dev_test_accuracy": accuracy(scored, test.labels),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
