"""Throughput of a model on this machine, batch size by batch size, side by side in one run.

    python scripts/bench_model.py                      # the bundled default model
    python scripts/bench_model.py --model default@2 --registry s3://bucket/models
    python scripts/bench_model.py --threads 2 --seconds 3 --batches 1,8,32,64,128,256,512

Measures ``LoadedModel.predict_proba`` (normalisation, forward pass, softmax: what
the engine runs per batch) on uint8 images, after a warm-up, for a fixed time
per batch size, and prints images/s and latency per batch. The best batch size
is the throughput figure in docs/performance.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from contracts import ModelRef
from worker.inference.device import configure_cpu_threads, select_device
from worker.inference.provider import ModelProvider
from worker.inference.registry import ModelRegistry
from worker.settings import Settings
from worker.storage import Storage


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--registry", default="")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per batch size")
    parser.add_argument("--batches", default="1,8,32,64,128,256,512")
    args = parser.parse_args()
    settings = Settings(model_registry=args.registry)
    configure_cpu_threads(args.threads)
    storage = Storage.from_settings(settings)
    provider = ModelProvider(
        ModelRegistry.from_settings(settings, storage), select_device(settings.device)
    )
    model = provider.get(ModelRef.parse(args.model))
    print(
        f"model {model.id.name}@{model.id.version} ({model.card.architecture}), "
        f"device {model.device}, torch threads {torch.get_num_threads()}"
    )
    rng = np.random.default_rng(0)
    best = (0.0, 0)
    print(f"{'batch':>6} {'img/s':>9} {'ms/batch':>9}")
    for batch in (int(b) for b in args.batches.split(",")):
        images = rng.integers(0, 256, (batch, *model.input_shape), dtype=np.uint8)
        for _ in range(3):
            model.predict_proba(images)
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            model.predict_proba(images)
            n += 1
        elapsed = time.perf_counter() - started
        rate = n * batch / elapsed
        best = max(best, (rate, batch))
        print(f"{batch:>6} {rate:>9.0f} {elapsed / n * 1e3:>9.2f}")
    print(f"best: {best[0]:.0f} images/s at batch {best[1]}")


if __name__ == "__main__":
    main()
