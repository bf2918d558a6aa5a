"""Cut the bundled demo/test sample from CIFAKE's test split (never from training data).

    python scripts/make_sample.py [--per-class 200] [--seed 7]

Writes ``tests/data/cifake-sample/{real,synthetic}/*.jpg``: original CIFAKE files,
byte for byte, chosen at random (seeded) from ``dev-test.tar``.
"""

from __future__ import annotations

import argparse
import random
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TAR = ROOT.parent / "shared" / "data" / "cifake" / "dev-test.tar"
OUT = ROOT / "tests" / "data" / "cifake-sample"
FOLDERS = {"REAL": "real", "FAKE": "synthetic"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tar", type=Path, default=DEFAULT_TAR)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tarfile.open(args.tar) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
        rng = random.Random(args.seed)
        for source, folder in FOLDERS.items():
            chosen = [m for m in members if m.name.startswith(source + "/")]
            chosen = sorted(rng.sample(chosen, args.per_class), key=lambda m: m.name)
            target = OUT / folder
            target.mkdir(parents=True, exist_ok=True)
            for member in chosen:
                file = archive.extractfile(member)
                assert file is not None, f"{member.name} is not a regular file"
                data = file.read()
                (target / Path(member.name).name).write_bytes(data)
            print(f"{len(chosen)} {source} images -> {target}")


if __name__ == "__main__":
    main()
