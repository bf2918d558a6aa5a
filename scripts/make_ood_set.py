"""Build an out-of-domain development set for the domain check from images we may use.

    python scripts/make_ood_set.py --out .cache/ood          # about 700 images, 1-2 min

Nothing here is CIFAKE-like on purpose except the last two groups, which are CIFAKE
images pushed out of the training conditions. Every source is shippable or generated:

- ``photos``: the public-domain / CC0 photographs shipped in scikit-image's data
  module (astronaut, chelsea, coffee, rocket, hubble_deep_field, retina, camera,
  coins, ...; each function's docstring states its licence) and matplotlib's
  ``grace_hopper.jpg`` (US Navy, public domain): random crops and resizes from 256 px
  to phone sizes (3024x4032), JPEG re-encoded at random qualities;
- ``renders``: procedural images drawn here: gradients, shapes, text "screenshots",
  plots, noise;
- ``cifake-upscaled``: CIFAKE images (from the validation split of ``dev-train.tar``
  that training holds back) upscaled to phone and web sizes;
- ``cifake-processed``: the same images at 48-64 px or JPEG-recompressed at quality
  10-30 at 32x32, inside the size rule, so only the features can tell.

Every image is written twice: ``as-is/<group>/`` at its size, and
``squeezed/<group>/`` resized to 32x32 (Lanczos, whole image, PNG), the case where
the size cannot tell it apart. ``scripts/evaluate_domain.py`` scores both.
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

PHONE_SIZES = ((3024, 4032), (4032, 3024), (1080, 1350), (1920, 1080), (2048, 2048), (768, 1024))
SQUEEZED = (32, 32)
PHOTO_FUNCTIONS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
    "coins",
    "brick",
    "grass",
    "gravel",
    "clock",
    "cell",
    "microaneurysms",
    "text",
)
"""scikit-image data functions whose docstrings say CC0 or public domain (checked for 0.26)."""


def source_photos() -> list[tuple[str, Image.Image]]:
    """The shippable photographs, as RGB Pillow images."""
    import matplotlib
    import skimage.data

    photos = []
    for name in PHOTO_FUNCTIONS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        photos.append((name, Image.fromarray(array[..., :3].astype(np.uint8)).convert("RGB")))
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    photos.append(("grace_hopper", Image.open(path).convert("RGB")))
    return photos


def photo_variants(rng: np.random.Generator, count: int) -> Iterator[tuple[str, Image.Image]]:
    """Crops of random size and place, resized to sizes from 256 px to phone sizes."""
    photos = source_photos()
    for i in range(count):
        name, photo = photos[i % len(photos)]
        w, h = photo.size
        share = rng.uniform(0.4, 1.0)
        cw, ch = max(16, int(w * share)), max(16, int(h * share))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.3:
            size = PHONE_SIZES[int(rng.integers(len(PHONE_SIZES)))]
        else:
            side = int(rng.integers(256, 1025))
            size = (side, max(16, round(side * ch / cw)))
        yield f"{name}-{i}", crop.resize(size, Image.Resampling.LANCZOS)


def render_variants(rng: np.random.Generator, count: int) -> Iterator[tuple[str, Image.Image]]:
    """Procedural images: each kind in turn, at a random size from 256 to 2048 px."""
    kinds: list[Callable[[np.random.Generator, tuple[int, int]], Image.Image]] = [
        _gradient,
        _shapes,
        _screenshot,
        _noise,
        _plot,
    ]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        w = int(rng.integers(256, 2049))
        h = int(np.clip(w * rng.uniform(0.5, 2.0), 256, 2048))
        yield f"{kind.__name__.strip('_')}-{i}", kind(rng, (w, h))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def _gradient(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / (w + h)
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    pixels = a + (b - a) * t[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _shapes(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, _colour(rng))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(int(rng.integers(5, 40))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=_colour(rng))
        else:
            draw.line((x0, y0, x1, y1), fill=_colour(rng), width=int(rng.integers(1, 12)))
    return image


def _screenshot(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A UI-like page: title bar, text lines, buttons."""
    w, h = size
    image = Image.new("RGB", size, (250, 250, 250) if rng.random() < 0.7 else (30, 30, 36))
    draw = ImageDraw.Draw(image)
    ink = (20, 20, 20) if image.getpixel((0, 0)) == (250, 250, 250) else (230, 230, 230)
    draw.rectangle((0, 0, w, max(24, h // 16)), fill=_colour(rng))
    font = ImageFont.load_default(size=int(rng.integers(12, 28)))
    words = ["synthdetect", "queue", "result", "label", "image", "model", "domain", "photo"]
    y = max(24, h // 16) + 10
    while y < h - 30:
        picks = rng.integers(0, len(words), int(rng.integers(3, 12)))
        line = " ".join(words[int(k)] for k in picks)
        draw.text((12, y), line, fill=ink, font=font)
        y += int(font.size * 1.6) if hasattr(font, "size") else 20
        if rng.random() < 0.1:
            draw.rounded_rectangle((12, y, 140, y + 32), radius=6, fill=_colour(rng))
            y += 44
    return image


def _noise(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    small = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 3)))


def _plot(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w, h = size
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_subplot()
    x = np.linspace(0, 10, 200)
    for _ in range(int(rng.integers(1, 5))):
        ax.plot(x, np.sin(x * rng.uniform(0.2, 3)) * rng.uniform(0.5, 3) + rng.normal(0, 0.1, 200))
    ax.set_title("measurements")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image.open(buf).convert("RGB")


def cifake_images(tar: Path, count: int, seed: int) -> list[tuple[str, Image.Image]]:
    """``count`` images of the validation split that ``train_default_model.py`` holds back,
    named ``<label>-<name>`` (real or synthetic) so their accuracy can be scored too."""
    import tarfile

    from worker.retrain.training.splits import stratified_split

    with tarfile.open(tar) as archive:
        members = sorted(
            (m for m in archive.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")),
            key=lambda m: m.name,
        )
        labels = np.array([0 if m.name.upper().startswith("REAL/") else 1 for m in members])
        _, held = stratified_split(labels, 2000 / len(members), seed=0)
        chosen = np.random.default_rng(seed).choice(held, size=count, replace=False)
        out = []
        for index in chosen:
            member = members[int(index)]
            data = archive.extractfile(member).read()  # type: ignore[union-attr]
            label = "real" if member.name.upper().startswith("REAL/") else "synthetic"
            name = f"{label}-{Path(member.name).stem}"
            out.append((name, Image.open(io.BytesIO(data)).convert("RGB")))
    return out


def save(image: Image.Image, path: Path, rng: np.random.Generator, jpeg_share: float) -> None:
    """JPEG (random quality) or PNG; the squeezed copy is always PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rng.random() < jpeg_share:
        image.save(path.with_suffix(".jpg"), "JPEG", quality=int(rng.integers(60, 96)))
    else:
        image.save(path.with_suffix(".png"), "PNG")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(".cache/ood"))
    default_tar = Path(__file__).resolve().parents[1].parent / "shared/data/cifake/dev-train.tar"
    parser.add_argument("--train-tar", type=Path, default=default_tar)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--renders", type=int, default=200)
    parser.add_argument("--cifake", type=int, default=100)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    written = 0

    def emit(group: str, name: str, image: Image.Image, jpeg_share: float) -> None:
        nonlocal written
        save(image, args.out / "as-is" / group / name, rng, jpeg_share)
        squeezed = image.resize(SQUEEZED, Image.Resampling.LANCZOS)
        save(squeezed, args.out / "squeezed" / group / name, rng, 0.0)
        written += 1

    for name, image in photo_variants(rng, args.photos):
        emit("photos", name, image, 0.7)
    for name, image in render_variants(rng, args.renders):
        emit("renders", name, image, 0.3)
    for i, (name, image) in enumerate(cifake_images(args.train_tar, args.cifake, args.seed)):
        size = PHONE_SIZES[i % len(PHONE_SIZES)] if i % 2 == 0 else (512, 512)
        emit("cifake-upscaled", f"{name}-{i}", image.resize(size, Image.Resampling.BICUBIC), 0.7)
        if i % 2 == 0:
            side = int(rng.integers(48, 65))
            processed = image.resize((side, side), Image.Resampling.BICUBIC)
            emit("cifake-processed", f"{name}-{i}", processed, 0.5)
        else:
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=int(rng.integers(10, 31)))
            emit("cifake-processed", f"{name}-{i}", Image.open(buf).convert("RGB"), 0.0)
    print(f"{written} images in {args.out}/as-is and {args.out}/squeezed")


if __name__ == "__main__":
    main()
