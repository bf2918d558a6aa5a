"""What reading provenance costs per image, next to decoding and preprocessing the same bytes.

    python scripts/bench_provenance.py                         # the CIFAKE sample
    python scripts/bench_provenance.py .cache/ood/as-is/photos # photos (make_ood_set.py)

Both run on one thread over the same files, a few passes each, interleaved; the ratio
is what provenance adds to the decode step of the pipeline.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from contracts import Preprocessing
from worker.imaging import ImageLimits, load_image
from worker.provenance.reader import ProvenanceReader
from worker.settings import Settings

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "cifake-sample"


def per_image_us(run: Callable[[bytes], object], files: list[bytes], passes: int) -> float:
    started = time.perf_counter()
    for _ in range(passes):
        for data in files:
            run(data)
    return (time.perf_counter() - started) / (passes * len(files)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, nargs="?", default=SAMPLE)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    images = (".jpg", ".jpeg", ".png", ".webp")
    files = [p.read_bytes() for p in sorted(args.folder.rglob("*")) if p.suffix.lower() in images]
    limits = ImageLimits.from_settings(Settings())
    spec = Preprocessing(input_size=(32, 32))
    reader = ProvenanceReader()
    decode_us = provenance_us = 0.0
    for _ in range(2):  # interleaved, the second round counts
        decode_us = per_image_us(lambda d: load_image(d, limits, spec), files, args.passes)
        provenance_us = per_image_us(reader.read, files, args.passes)
    size = sum(map(len, files)) / len(files)
    print(
        f"{len(files)} files, {size / 1e3:.1f} kB on average: decode + preprocess "
        f"{decode_us:.0f} us, provenance {provenance_us:.0f} us per image "
        f"({provenance_us / decode_us:.0%} of decoding)"
    )


if __name__ == "__main__":
    main()
