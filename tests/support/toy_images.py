"""A learnable toy data set for training tests: noisy dark images (label 0) and noisy
bright ones (label 1), alternating, so a tiny SynthNet separates them in a few steps;
and the PNG files of such images, for tests that go through decoding."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

DARK, BRIGHT = 60, 190


def bright_and_dark(n: int, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, size, size, 3), labels int64 (n,)); labels alternate 0, 1, 0, ..."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    base = np.where(labels == 1, BRIGHT, DARK)[:, None, None, None]
    noisy = base + rng.normal(0.0, 25.0, (n, size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def png_bytes(pixels: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) array as a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()
