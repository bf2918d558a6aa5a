"""What the domain score costs: the bundled default model with and without it, interleaved.

    python scripts/bench_domain_overhead.py            # default@1, batch 64, six rounds

The network is rebuilt from the bundled file (``add_domain_check.rebuild_lite0``) and
exported once more without the domain head; both files are loaded as the engine loads
them and timed in alternating one-second rounds (normalise + forward + softmax, what
``LoadedModel.predict_proba`` runs), so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch

from contracts import ModelRef
from scripts.add_domain_check import ARCHITECTURE, rebuild_lite0
from worker.inference.device import configure_cpu_threads
from worker.inference.model import LoadedModel, load_model, sha256_hex
from worker.inference.registry import ModelRegistry
from worker.retrain.training.export import export_torchscript
from worker.settings import Settings
from worker.storage import Storage

CPU = torch.device("cpu")


def rate(model: LoadedModel, images: np.ndarray, seconds: float) -> float:
    started, batches = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        model.predict_proba(images)
        batches += 1
    return batches * len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default@1")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    configure_cpu_threads(args.threads)
    registry = ModelRegistry.from_settings(Settings(), Storage.from_settings(Settings()))
    card, data = registry.read_model(registry.resolve(ModelRef.parse(args.model)))
    match = ARCHITECTURE.match(card.architecture)
    if match is None or card.domain is None:
        raise SystemExit(f"{args.model}: needs a plain Lite0 export with a domain check")
    module = torch.jit.load(io.BytesIO(data)).eval()
    plain_bytes = export_torchscript(
        rebuild_lite0(module, int(match.group(1)), int(match.group(2))),
        card.preprocessing.input_size,
    )
    plain_card = card.model_copy(
        update={"sha256": sha256_hex(plain_bytes), "size_bytes": len(plain_bytes), "domain": None}
    )
    models = {
        "without domain score": load_model(plain_card, plain_bytes, CPU),
        "with domain score": load_model(card, data, CPU),
    }
    h, w = card.preprocessing.input_size
    images = np.random.default_rng(0).integers(0, 256, (args.batch, h, w, 3), dtype=np.uint8)
    for model in models.values():
        rate(model, images, 1.0)  # warm up
    rates: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for key, model in models.items():
            rates[key].append(rate(model, images, 1.0))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    for key, value in medians.items():
        print(f"{key}: {value:,.0f} images/s (median of {args.rounds} rounds, batch {args.batch})")
    base = medians["without domain score"]
    print(f"domain score costs {1 - medians['with domain score'] / base:.1%} of the throughput")


if __name__ == "__main__":
    main()
