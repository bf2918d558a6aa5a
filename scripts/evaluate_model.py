"""Accuracy, per-class accuracy and calibration of a model on a labelled tar or folder.

    python scripts/evaluate_model.py                                 # default model on dev-test.tar
    python scripts/evaluate_model.py --model default@2 --registry s3://bucket/models
    python scripts/evaluate_model.py --data path/to/folders-per-label

Images go through the serving preprocessing and the model's own calibrated
probabilities (exactly what ``synthdetect classify`` reports). CIFAKE's folder
name ``FAKE`` counts as the label ``synthetic``. These are the figures in docs/default-model.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from contracts import ModelRef
from worker.classify.inputs import expand_paths
from worker.imaging import ImageLimits
from worker.inference.device import select_device
from worker.inference.provider import ModelProvider
from worker.inference.registry import ModelRegistry
from worker.retrain.training.dataset import load_labelled_images
from worker.review.evaluation import evaluation_metrics
from worker.settings import Settings
from worker.storage import Storage

DEV_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake" / "dev-test.tar"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--registry", default="")
    parser.add_argument("--data", default=str(DEV_TEST))
    args = parser.parse_args()
    settings = Settings(model_registry=args.registry)
    storage = Storage.from_settings(settings)
    provider = ModelProvider(
        ModelRegistry.from_settings(settings, storage), select_device(settings.device)
    )
    model = provider.get(ModelRef.parse(args.model))
    items = expand_paths([args.data], storage, settings.max_image_bytes, labels_from_folders=True)
    data, report = load_labelled_images(
        items,
        model.card.preprocessing,
        ImageLimits.from_settings(settings),
        label_aliases={"fake": "synthetic"},
    )
    index = [model.card.labels.index(name) for name in data.label_names]
    started = time.perf_counter()
    probs = np.concatenate(
        [model.predict_proba(data.images[i : i + 256]) for i in range(0, len(data), 256)]
    )
    elapsed = time.perf_counter() - started
    metrics = evaluation_metrics(
        probs[:, index], data.labels, data.label_names, Path(args.data).name
    )
    print(
        json.dumps(
            {
                "model": f"{model.id.name}@{model.id.version}",
                "data": args.data,
                "n": metrics.n,
                "unreadable": len(report.unreadable),
                "accuracy": round(metrics.accuracy, 4),
                "per_class_accuracy": {
                    k: round(v, 4) for k, v in metrics.per_class_accuracy.items()
                },
                "ece": round(metrics.ece or 0.0, 4),
                "model_bytes": model.card.size_bytes,
                "scoring_images_per_s": round(len(data) / elapsed),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
