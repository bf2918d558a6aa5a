"""The benchmark's images: CIFAKE JPEGs, large synthetic photos, huge PNGs, and tars of them.

Everything is made in memory from ``shared/data/cifake`` (CIFAKE, MIT) or from
numpy noise, so a run needs no download. Large "photos" are CIFAKE images scaled up
to 1-4 MP with multi-scale noise and edges on top and saved as quality-90 4:2:0
JPEGs: their size per megapixel (about 300-600 kB) and their decoding cost are
those of camera photos, which smooth upscales alone would not be.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from itertools import cycle, islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).parents[2]
CIFAKE_DIRS = (Path("/work/shared/data/cifake"), REPO.parent / "shared" / "data" / "cifake")
LARGE_SIZES = ((1280, 960), (1600, 1200), (2048, 1536), (2304, 1728))
"""Width x height of the large photos: 1.2, 1.9, 3.1 and 4.0 megapixels."""


def cifake_tar(name: str) -> Path:
    """``dev-train.tar`` or ``dev-test.tar`` from the shared data folder."""
    for folder in CIFAKE_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} not found in {', '.join(str(d) for d in CIFAKE_DIRS)}")


def cifake_images(count: int) -> list[tuple[str, bytes]]:
    """``count`` (member name, JPEG bytes) pairs: dev-train first, then dev-test.

    Past the 45,584 distinct images the same bytes come again under new names.
    """
    found: list[tuple[str, bytes]] = []
    for name in ("dev-train.tar", "dev-test.tar"):
        with tarfile.open(cifake_tar(name)) as archive:
            for member in archive:
                reader = archive.extractfile(member) if member.isreg() else None
                if reader is not None:
                    found.append((f"{name[:-4]}/{member.name}", reader.read()))
                    if len(found) == count:
                        return found
    return [
        (f"r{i // len(found)}/{key}", data)
        for i, (key, data) in enumerate(islice(cycle(found), count))
    ]


def large_photos(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` photo-like JPEGs of 1-4 MP (about 10 distinct ones, repeated)."""
    rng = np.random.default_rng(seed)
    sources = cifake_images(16)
    distinct = []
    for i, (width, height) in enumerate(islice(cycle(LARGE_SIZES), min(count, 12))):
        small = Image.open(io.BytesIO(sources[i][1])).convert("RGB")
        distinct.append(_photo_like(small, width, height, rng))
    return [(f"large/{i:06d}.jpg", distinct[i % len(distinct)]) for i in range(count)]


def _photo_like(small: Image.Image, width: int, height: int, rng: np.random.Generator) -> bytes:
    base = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    for scale in (1, 4, 16):  # grain, texture and blotches, as in real scenes
        shape = (height // scale + 1, width // scale + 1, 3)
        noise = rng.normal(0.0, 6.0 * scale**0.5, shape).astype(np.float32)
        base += np.repeat(np.repeat(noise, scale, 0), scale, 1)[:height, :width]
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(60):  # sharp edges: what makes real photos costly to compress
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line(
            (x, y, x + int(rng.integers(-400, 400)), y + int(rng.integers(-400, 400))),
            fill=colour,
            width=int(rng.integers(1, 6)),
        )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, subsampling="4:2:0")
    return out.getvalue()


def huge_pngs(count: int, side: int = 7000) -> list[tuple[str, bytes]]:
    """``count`` ``side`` x ``side`` RGB PNGs (the same bytes under new names).

    Gradients and shapes compress to a few MB, so they pass the byte limit and
    cost the full decode: the worst legal case for memory (issue 11).
    """
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    pixels = np.stack([x * 255, y * 255, (1 - x) * y * 255], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for i in range(40):
        box = (
            i * side // 50,
            i * side // 60,
            i * side // 50 + side // 8,
            i * side // 60 + side // 9,
        )
        draw.ellipse(box, fill=(i * 6 % 256, 255 - i * 5, i * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    data = out.getvalue()
    return [(f"huge/{i:04d}.png", data) for i in range(count)]


def tar_bytes(files: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of the files, in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def repeated(files: list[tuple[str, bytes]], count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` files cycling through ``files``, each under a unique name."""
    for i, (name, data) in enumerate(islice(cycle(files), count)):
        yield f"{i:07d}-{name.replace('/', '-')}", data
