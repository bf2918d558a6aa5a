"""Per-image cost of the worker's CPU stages, old way and new way side by side, in µs.

    python scripts/bench_stages.py [--images 5000] [--rounds 3]

- tar members: ``tarfile`` in stream mode against ``worker.classify.tarstream``;
- decode + preprocess of a 32x32 CIFAKE JPEG: Pillow (``imaging``'s Pillow path)
  against ``imaging.load_image`` (simplejpeg);
- the same for the 1-4 MP photos ``scripts/bench`` makes (DCT scaling in both).

One thread, in this process, best of ``--rounds``: costs, not throughput.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
from collections.abc import Callable

from contracts import Preprocessing
from scripts.throughput.data import cifake_images, large_photos, tar_bytes
from worker import imaging
from worker.classify.tarstream import read_members
from worker.imaging import ImageLimits
from worker.settings import Settings

SPEC = Preprocessing(input_size=(32, 32))


def best_us(work: Callable[[], int], rounds: int) -> float:
    """The lowest µs per item over ``rounds`` runs of ``work`` (which returns its item count)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        count = work()
        best = min(best, (time.perf_counter() - started) / count * 1e6)
    return best


def with_tarfile(data: bytes) -> int:
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        for member in archive:
            reader = archive.extractfile(member)
            if reader is not None:
                reader.read()
            count += 1
    return count


def with_tarstream(data: bytes) -> int:
    count = 0
    for _, reader in read_members(io.BytesIO(data)):
        reader.read()
        count += 1
    return count


def pillow_path(images: list[bytes], limits: ImageLimits) -> int:
    for data in images:
        with imaging._decoded(data, limits, SPEC.input_size) as (image, _):
            imaging.preprocess(image, SPEC)
    return len(images)


def worker_path(images: list[bytes], limits: ImageLimits) -> int:
    for data in images:
        imaging.load_image(data, limits, SPEC)
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    limits = ImageLimits.from_settings(Settings())
    small = cifake_images(args.images)
    data = tar_bytes(small)
    blobs = [blob for _, blob in small]
    photos = [blob for _, blob in large_photos(24)]
    rows = [
        ("tar member", lambda: with_tarfile(data), lambda: with_tarstream(data)),
        ("32x32 JPEG", lambda: pillow_path(blobs, limits), lambda: worker_path(blobs, limits)),
        ("1-4 MP JPEG", lambda: pillow_path(photos, limits), lambda: worker_path(photos, limits)),
    ]
    print(f"{'stage':<12} {'before µs':>10} {'now µs':>10} {'ratio':>7}")
    for name, before, now in rows:
        old, new = best_us(before, args.rounds), best_us(now, args.rounds)
        print(f"{name:<12} {old:>10.1f} {new:>10.1f} {old / new:>6.1f}x")


if __name__ == "__main__":
    main()
