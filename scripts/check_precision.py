"""Does reduced precision keep the default model's answers? bf16 and fp16 against fp32 on dev-test.

    python scripts/check_precision.py                       # CUDA when present, else the CPU
    python scripts/check_precision.py --device cpu --limit 4000

Scores every image of CIFAKE ``dev-test.tar`` in fp32 and under autocast in each
reduced precision, as the worker runs on CUDA (``SYNTHDETECT_CUDA_PRECISION``),
and prints the accuracy of each, how many labels differ from fp32 and the
largest change of a probability. A precision holds when the accuracy moves by at
most 0.1 point and fewer than 0.5 % of the labels flip.

Run it on a CUDA machine: on a CPU, TorchScript graphs ignore autocast (and the
traced model's weights are graph constants, so casting the module fails too),
so the script says that autocast had no effect instead of reporting a check.
"""

from __future__ import annotations

import argparse
import tarfile
import time

import numpy as np
import torch

from contracts import ModelRef, Preprocessing
from scripts.throughput.data import cifake_tar
from worker.imaging import ImageLimits, load_image_array
from worker.inference.device import select_device
from worker.inference.model import LoadedModel
from worker.inference.provider import ModelProvider
from worker.inference.registry import ModelRegistry
from worker.settings import Settings
from worker.storage import Storage

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def load_images(limit: int, spec: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed dev-test images and their labels (1 = synthetic)."""
    limits = ImageLimits.from_settings(Settings())
    pixels, labels = [], []
    with tarfile.open(cifake_tar("dev-test.tar")) as archive:
        for member in archive:
            reader = archive.extractfile(member) if member.isreg() else None
            if reader is None:
                continue
            pixels.append(load_image_array(reader.read(), limits, spec))
            labels.append(0 if member.name.startswith("REAL/") else 1)
            if len(pixels) == limit:
                break
    return np.stack(pixels), np.array(labels)


def probabilities(model: LoadedModel, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate(
        [model.predict_proba(images[i : i + batch]) for i in range(0, len(images), batch)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--limit", type=int, default=0, help="images (0 = all 15,584)")
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    settings = Settings()
    device = select_device(args.device)
    provider = ModelProvider(
        ModelRegistry.from_settings(settings, Storage.from_settings(settings)), device
    )
    model = provider.get(ModelRef())
    images, labels = load_images(args.limit or 10**9, model.card.preprocessing)
    print(f"{len(images):,} dev-test images on {device}")
    reference = probabilities(model, images, args.batch)
    reference_accuracy = float((reference.argmax(1) == labels).mean())
    print(f"fp32: accuracy {reference_accuracy:.4%}")
    for name, dtype in PRECISIONS.items():
        model.autocast_dtype = dtype
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            reduced = probabilities(model, images, args.batch)
        elapsed = time.perf_counter() - started
        model.autocast_dtype = None
        if np.array_equal(reduced, reference):
            print(f"{name}: autocast had no effect on {device} (TorchScript): not checked here")
            continue
        accuracy = float((reduced.argmax(1) == labels).mean())
        flipped = int((reduced.argmax(1) != reference.argmax(1)).sum())
        drift = float(np.abs(reduced - reference).max())
        holds = abs(accuracy - reference_accuracy) <= 0.001 and flipped < 0.005 * len(images)
        print(
            f"{name}: accuracy {accuracy:.4%} ({accuracy - reference_accuracy:+.4%}), "
            f"{flipped} labels differ from fp32, largest probability change {drift:.4f}, "
            f"{len(images) / elapsed:,.0f} images/s -> {'holds' if holds else 'does NOT hold'}"
        )


if __name__ == "__main__":
    main()
