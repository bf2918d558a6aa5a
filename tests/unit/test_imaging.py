"""Tests for worker.imaging: every mode and format in, 8-bit upright RGB out, or a coded failure."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageFile

from contracts import ErrorCode, Preprocessing
from worker import imaging
from worker.errors import ImageFailure
from worker.imaging import (
    ImageLimits,
    PixelBudget,
    decode_image,
    load_image_array,
    preprocess,
)
from worker.settings import Settings

ALL_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=10_000_000, allowed_formats=ALL_FORMATS)
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
COLOUR = (200, 40, 90)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image that compresses badly, so truncation cuts into pixel data."""
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def assert_colour(image: Image.Image, expected: tuple[int, int, int], tolerance: int = 0) -> None:
    """Every pixel of an RGB image is ``expected`` within ``tolerance`` per channel."""
    assert image.mode == "RGB"
    difference = np.abs(np.asarray(image, dtype=int) - np.array(expected)).max()
    assert difference <= tolerance, f"{image.getpixel((0, 0))} is not {expected}"


def assert_fails(code: ErrorCode, data: bytes, limits: ImageLimits = LIMITS) -> ImageFailure:
    with pytest.raises(ImageFailure) as caught:
        decode_image(data, limits)
    assert caught.value.code is code
    assert caught.value.message.strip()
    return caught.value


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (with a valid CRC) claims ``width`` x ``height`` pixels."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC of type + IHDR data
    return bytes(data)


def palette_image(mode: str, fill: int | tuple[int, int]) -> Image.Image:
    image = Image.new(mode, (4, 4), fill)
    image.putpalette([0, 0, 0, *COLOUR])
    return image


def lab_red() -> Image.Image:
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    return ImageCms.applyTransform(Image.new("RGB", (4, 4), RED), to_lab)


def with_orientation(image: Image.Image, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(image, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


# --- formats and modes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("GIF", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("JPEG", {"quality": 95}, 3),
        (
            "MPO",
            {"quality": 95, "save_all": True, "append_images": [Image.new("RGB", (24, 16))]},
            3,
        ),
    ],
)
def test_every_allowed_format_decodes(fmt: str, params: dict[str, object], tolerance: int) -> None:
    image = decode_image(encode(Image.new("RGB", (24, 16), COLOUR), fmt, **params), LIMITS)
    assert image.size == (24, 16)
    assert_colour(image, COLOUR, tolerance)


MODE_CASES: list[tuple[str, Callable[[], Image.Image], str, tuple[int, int, int], int]] = [
    ("1", lambda: Image.new("1", (4, 4), 1), "PNG", WHITE, 0),
    ("1-bmp", lambda: Image.new("1", (4, 4), 0), "BMP", (0, 0, 0), 0),
    ("L", lambda: Image.new("L", (4, 4), 77), "PNG", (77, 77, 77), 0),
    ("L-jpeg", lambda: Image.new("L", (4, 4), 77), "JPEG", (77, 77, 77), 1),
    ("P", lambda: palette_image("P", 1), "PNG", COLOUR, 0),
    ("P-transparent-png", lambda: palette_image("P", 1), "PNG", WHITE, 0),
    ("P-transparent-gif", lambda: palette_image("P", 1), "GIF", WHITE, 0),
    ("PA-opaque", lambda: palette_image("PA", (1, 255)), "TIFF", COLOUR, 0),
    ("PA-transparent", lambda: palette_image("PA", (1, 0)), "TIFF", WHITE, 0),
    ("RGB-colour-key", lambda: Image.new("RGB", (4, 4), COLOUR), "PNG", WHITE, 0),
    ("RGBA-transparent", lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG", WHITE, 0),
    (
        "RGBA-half-red",
        lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 128)),
        "PNG",
        (255, 127, 127),
        1,
    ),
    ("RGBA-webp", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 128)), "WEBP", (255, 127, 127), 1),
    ("LA-transparent", lambda: Image.new("LA", (4, 4), (0, 0)), "TIFF", WHITE, 0),
    ("LA-half-black", lambda: Image.new("LA", (4, 4), (0, 128)), "PNG", (127, 127, 127), 1),
    ("I;16-max", lambda: Image.new("I;16", (4, 4), 65535), "PNG", WHITE, 0),
    ("I;16-mid", lambda: Image.new("I;16", (4, 4), 32768), "PNG", (128, 128, 128), 0),
    ("I;16B", lambda: Image.new("I;16B", (4, 4), 32768), "TIFF", (128, 128, 128), 0),
    ("I-8bit-data", lambda: Image.new("I", (4, 4), 200), "TIFF", (200, 200, 200), 0),
    ("I-16bit-data", lambda: Image.new("I", (4, 4), 1000), "TIFF", (3, 3, 3), 0),
    ("I-32bit-data", lambda: Image.new("I", (4, 4), 2**30), "TIFF", (128, 128, 128), 0),
    ("F-normalised", lambda: Image.new("F", (4, 4), 0.5), "TIFF", (128, 128, 128), 0),
    ("F-0-255", lambda: Image.new("F", (4, 4), 100.0), "TIFF", (100, 100, 100), 0),
    ("F-clipped", lambda: Image.new("F", (4, 4), 300.0), "TIFF", WHITE, 0),
    ("CMYK-cyan", lambda: Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "TIFF", (0, 255, 255), 0),
    ("CMYK-jpeg", lambda: Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "JPEG", (0, 255, 255), 3),
    ("YCbCr", lambda: Image.new("RGB", (4, 4), RED).convert("YCbCr"), "TIFF", RED, 2),
    ("LAB", lab_red, "TIFF", RED, 6),
]
TRANSPARENCY = {"P-transparent-png": 1, "P-transparent-gif": 1, "RGB-colour-key": COLOUR}


@pytest.mark.parametrize(
    ("case", "make", "fmt", "expected", "tolerance"), MODE_CASES, ids=[c[0] for c in MODE_CASES]
)
def test_every_mode_becomes_8bit_rgb(
    case: str,
    make: Callable[[], Image.Image],
    fmt: str,
    expected: tuple[int, int, int],
    tolerance: int,
) -> None:
    params = {"transparency": TRANSPARENCY[case]} if case in TRANSPARENCY else {}
    if fmt == "WEBP":
        params["lossless"] = True
    data = encode(make(), fmt, **params)
    assert_colour(decode_image(data, LIMITS), expected, tolerance)


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_gives_its_first_frame(fmt: str, params: dict[str, object]) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **params)
    assert_colour(decode_image(data, LIMITS), RED)


# --- orientation and draft mode ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize(
    ("orientation", "size", "red_corner"),
    [(1, (40, 20), (3, 3)), (6, (20, 40), (16, 3)), (8, (20, 40), (3, 36))],
)
def test_exif_orientation_is_applied(
    fmt: str, orientation: int, size: tuple[int, int], red_corner: tuple[int, int]
) -> None:
    stored = Image.new("RGB", (40, 20), WHITE)
    stored.paste(RED, (0, 0, 8, 8))  # marks the stored top-left corner
    image = decode_image(with_orientation(stored, orientation, fmt), LIMITS)
    assert image.size == size
    red, green, _ = image.getpixel(red_corner)
    assert red > 200
    assert green < 60
    assert sum(image.getpixel((size[0] // 2, size[1] // 2))) > 700  # the rest stays white


def test_draft_decodes_a_large_jpeg_smaller_but_not_below_the_target() -> None:
    data = encode(Image.new("RGB", (2000, 1600), COLOUR), "JPEG")
    full = decode_image(data, LIMITS)
    drafted = decode_image(data, LIMITS, target_size=(100, 120))
    assert full.size == (2000, 1600)
    assert drafted.width >= 120
    assert drafted.height >= 100
    assert drafted.width <= 1000  # scaled by at least 1/2 in the decoder
    assert_colour(drafted, COLOUR, tolerance=3)


@pytest.mark.parametrize(
    ("target_size", "expected_size"),
    [
        # Drafting by the unrotated size would give 100x400, narrower than the target.
        ((200, 400), (400, 1600)),
        ((100, 50), (50, 200)),
    ],
)
def test_draft_accounts_for_exif_rotation(
    target_size: tuple[int, int], expected_size: tuple[int, int]
) -> None:
    data = with_orientation(Image.new("RGB", (1600, 400), COLOUR), 6, "JPEG")
    image = decode_image(data, LIMITS, target_size=target_size)
    assert image.size == expected_size
    assert image.height >= target_size[0]
    assert image.width >= target_size[1]


def test_load_image_array_decodes_and_fits() -> None:
    data = encode(noise((2000, 1600)), "JPEG")
    pixels = load_image_array(data, LIMITS, Preprocessing(input_size=(100, 120)))
    assert pixels.shape == (100, 120, 3)
    assert pixels.dtype == np.uint8


# --- failures --------------------------------------------------------------------------


def test_empty_file() -> None:
    assert_fails(ErrorCode.EMPTY_FILE, b"")


def test_too_many_bytes() -> None:
    data = encode(noise((64, 64)), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1, max_pixels=10**9, allowed_formats=ALL_FORMATS)
    failure = assert_fails(ErrorCode.TOO_LARGE, data, limits)
    assert str(len(data)) in failure.message


def test_text_is_unsupported() -> None:
    assert_fails(ErrorCode.UNSUPPORTED_FORMAT, b"name,label\ncat.jpg,real\n")


def test_image_format_outside_the_allowed_list_is_unsupported() -> None:
    limits = ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, frozenset({"JPEG", "PNG"}))
    assert_fails(ErrorCode.UNSUPPORTED_FORMAT, encode(Image.new("RGB", (8, 8)), "GIF"), limits)
    assert_fails(ErrorCode.UNSUPPORTED_FORMAT, b"P6\n8 8\n255\n" + bytes(192))  # PPM, readable


def test_mpo_needs_its_own_permission() -> None:
    frame = Image.new("RGB", (8, 8))
    data = encode(frame, "MPO", save_all=True, append_images=[frame])
    limits = ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, frozenset({"JPEG"}))
    assert "MPO" in assert_fails(ErrorCode.UNSUPPORTED_FORMAT, data, limits).message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_truncated_image_is_corrupt_not_grey(fmt: str) -> None:
    data = encode(noise((64, 64)), fmt)
    assert_fails(ErrorCode.CORRUPT_IMAGE, data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_jpeg_without_its_end_marker_is_corrupt() -> None:
    assert_fails(ErrorCode.CORRUPT_IMAGE, encode(noise((64, 64)), "JPEG")[:-2])


def test_damaged_header_is_corrupt() -> None:
    data = bytearray(encode(noise((8, 8)), "PNG"))
    data[29] ^= 0xFF  # breaks the IHDR checksum, so Pillow cannot identify the file
    assert "PNG" in assert_fails(ErrorCode.CORRUPT_IMAGE, bytes(data)).message


# --- decompression bombs ---------------------------------------------------------------


def test_huge_header_fails_fast() -> None:
    started = time.perf_counter()
    assert_fails(ErrorCode.TOO_MANY_PIXELS, png_claiming(100_000, 100_000))
    assert time.perf_counter() - started < 1


def test_pixels_are_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_to_load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse_to_load)
    failure = assert_fails(ErrorCode.TOO_MANY_PIXELS, png_claiming(5000, 5000))
    assert "5000x5000" in failure.message


def test_highly_compressible_image_is_refused() -> None:
    data = encode(Image.new("L", (2000, 2000)), "PNG")
    assert len(data) < 50_000  # 4 M pixels in a few kilobytes
    limits = ImageLimits(LIMITS.max_bytes, 1_000_000, ALL_FORMATS)
    assert_fails(ErrorCode.TOO_MANY_PIXELS, data, limits)


def test_our_limit_wins_over_a_lower_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone would refuse 64x64
    limits = ImageLimits(LIMITS.max_bytes, 10_000, ALL_FORMATS)
    assert decode_image(encode(noise((64, 64)), "PNG"), limits).size == (64, 64)


def test_default_limit_leaves_pillow_limit_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    decode_image(encode(noise((8, 8)), "PNG"), LIMITS)
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_as_error_maps_to_too_many_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns for 1001..2000 pixels
    limits = ImageLimits(LIMITS.max_bytes, 1000, ALL_FORMATS)
    assert_fails(ErrorCode.TOO_MANY_PIXELS, encode(noise((40, 40)), "PNG"), limits)


# --- limits ----------------------------------------------------------------------------


def test_limits_from_settings() -> None:
    settings = Settings(max_image_bytes=123, max_image_pixels=456, allowed_formats=["png", "Jpeg"])
    assert ImageLimits.from_settings(settings) == ImageLimits(123, 456, frozenset({"PNG", "JPEG"}))


def test_unknown_format_name_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="JPG"):
        ImageLimits(1, 1, frozenset({"JPG", "PNG"}))


# --- preprocessing ---------------------------------------------------------------------


def three_stripes() -> Image.Image:
    """60x30: red left quarter, green middle half, blue right quarter."""
    image = Image.new("RGB", (60, 30), GREEN)
    image.paste(RED, (0, 0, 15, 30))
    image.paste(BLUE, (45, 0, 60, 30))
    return image


def test_center_crop_keeps_the_middle() -> None:
    pixels = preprocess(three_stripes(), Preprocessing(input_size=(10, 10)))
    assert pixels.shape == (10, 10, 3)
    assert pixels.dtype == np.uint8
    assert (pixels == GREEN).all()


def test_stretch_keeps_everything() -> None:
    spec = Preprocessing(input_size=(10, 20), resize="stretch")
    pixels = preprocess(three_stripes(), spec)
    assert pixels.shape == (10, 20, 3)
    assert tuple(pixels[5, 0]) == RED
    assert tuple(pixels[5, 10]) == GREEN
    assert tuple(pixels[5, 19]) == BLUE


@pytest.mark.parametrize("interpolation", ["box", "bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("resize", ["center_crop", "stretch"])
def test_every_interpolation_gives_the_target_shape(interpolation: str, resize: str) -> None:
    spec = Preprocessing(input_size=(24, 16), resize=resize, interpolation=interpolation)
    pixels = preprocess(noise((50, 70)), spec)
    assert pixels.shape == (24, 16, 3)
    assert pixels.flags.writeable


@pytest.mark.parametrize("interpolation", ["box", "lanczos"])
def test_image_at_target_size_is_not_resampled(interpolation: str) -> None:
    image = noise((32, 32))
    pixels = preprocess(image, Preprocessing(input_size=(32, 32), interpolation=interpolation))
    assert pixels.tobytes() == image.tobytes()


@pytest.mark.parametrize("interpolation", ["box", "bilinear", "bicubic", "lanczos"])
def test_crop_without_scaling_is_exact(interpolation: str) -> None:
    image = noise((40, 32))
    pixels = preprocess(image, Preprocessing(input_size=(32, 32), interpolation=interpolation))
    assert pixels.tobytes() == image.crop((4, 0, 36, 32)).tobytes()


def test_preprocess_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        preprocess(Image.new("L", (8, 8)), Preprocessing(input_size=(8, 8)))


# --- concurrency -----------------------------------------------------------------------


def test_concurrent_decodes_are_independent() -> None:
    formats = [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True})]
    formats += [("GIF", {}), ("BMP", {}), ("TIFF", {})]
    jobs = []
    for i in range(32):
        colour = (i * 8, 255 - i * 8, (i * 37) % 256)
        fmt, params = formats[i % len(formats)]
        jobs.append((colour, encode(Image.new("RGB", (96, 64), colour), fmt, **params)))
    start = threading.Barrier(len(jobs))

    def decode(data: bytes) -> Image.Image:
        start.wait()
        return decode_image(data, LIMITS, target_size=(32, 32))

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        images = list(pool.map(decode, [data for _, data in jobs]))
    for (colour, _), image in zip(jobs, images, strict=True):
        assert_colour(image, colour, tolerance=4)


# --- the decoded-pixel budget (issue 11: bounded memory) ---------------------------------------


def test_many_huge_images_in_many_threads_never_exceed_the_pixel_budget() -> None:
    side = 1500  # 2.25 M pixels a PNG: a budget of 5 M lets two decode at once, never three
    png = encode(Image.new("RGB", (side, side), COLOUR), "PNG")
    jpeg = encode(Image.new("RGB", (side, side), COLOUR), "JPEG")
    budget = PixelBudget(5_000_000)
    limits = ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, ALL_FORMATS, budget)
    spec = Preprocessing(input_size=(32, 32))
    with ThreadPoolExecutor(16) as pool:
        arrays = list(pool.map(lambda data: load_image_array(data, limits, spec), [png, jpeg] * 24))
    assert all(a.shape == (32, 32, 3) for a in arrays)
    assert budget.peak <= budget.capacity
    assert budget.peak >= side * side  # every PNG's full decode was held from the budget
    assert budget.in_use == 0


def test_an_image_larger_than_the_whole_budget_decodes_alone() -> None:
    budget = PixelBudget(1000)
    limits = ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, ALL_FORMATS, budget)
    data = encode(Image.new("RGB", (100, 100), COLOUR), "PNG")
    assert load_image_array(data, limits, Preprocessing(input_size=(8, 8))).shape == (8, 8, 3)
    assert budget.peak == 1000
    assert budget.in_use == 0


def test_the_simplejpeg_path_gives_pillows_pixels() -> None:
    sample = sorted((Path(__file__).parents[1] / "data" / "cifake-sample").glob("*/*.jpg"))[:20]
    spec = Preprocessing(input_size=(32, 32))
    for path in sample:
        data = path.read_bytes()
        fast = load_image_array(data, LIMITS, spec)
        with imaging._decoded(data, LIMITS, spec.input_size) as (image, source):
            slow = imaging.preprocess(image, spec)
        assert imaging.load_image(data, LIMITS, spec).source == source
        assert np.array_equal(fast, slow), path.name
