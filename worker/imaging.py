"""Safe decoding of untrusted image bytes, and fitting them to a model's input.

Checks run cheapest first and before any pixel is allocated: the byte count,
then the format (only the allowed formats' parsers ever see the bytes), then
width x height from the header. Only then are pixels decoded. Every failure is
an ``ImageFailure`` with a stable code, so one bad image never fails a job.

``decode_image`` may be called from many threads at once: calls share no
mutable state (see ``_let_pillow_reach`` for the one exception), and Pillow
releases the GIL while it decodes, so a thread pool uses every core.

Memory is bounded by a ``PixelBudget`` shared by every decoding thread of the
process: an image's decoded pixels are reserved from it once its header gave
their number and before any is allocated, and returned when its array is ready.
However many threads decode and however large the legal images, the pixels held
at once never exceed the budget (an image larger than the whole budget decodes
alone).

``load_image_array`` decodes baseline and progressive JPEGs with simplejpeg
(libjpeg-turbo called directly: the same decoder as Pillow's, the same pixels,
without Pillow's per-image Python work, which is most of the cost of a small
image), including DCT scaling of large ones; every other case (EXIF rotation,
CMYK, MPO, other formats, anything simplejpeg refuses) goes through Pillow.
"""

from __future__ import annotations

import ctypes
import io
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from struct import error as struct_error

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from contracts import ErrorCode, Preprocessing
from worker.errors import ImageFailure
from worker.settings import Settings

try:
    import simplejpeg
except ImportError:  # optional speed-up: Pillow decodes every JPEG too
    simplejpeg = None

_RESAMPLING = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
_DRAFTABLE_FORMATS = ("JPEG", "MPO")  # formats whose decoder can scale down while decoding
_WIDE_GRAY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_WHITE = (255, 255, 255)
_pillow_limit_lock = threading.Lock()
_M_MMAP_THRESHOLD = -3
_JPEG_SOI = b"\xff\xd8\xff"
_SIMPLEJPEG_COLOURS = ("Gray", "YCbCr", "RGB")
"""JPEG colour spaces simplejpeg turns into RGB exactly as Pillow does (CMYK and YCCK: Pillow)."""


class PixelBudget:
    """A process-wide cap on decoded pixels in flight, shared by every decoding thread.

    ``hold(n)`` waits until ``n`` pixels are free, holds them for the ``with``
    block, then returns them. Waiters are served first come, first served, so a
    large image is never starved by a stream of small ones; a request larger than
    the whole budget waits for all of it (it runs alone). ``peak`` is the most
    ever held at once, for tests and benchmarks.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a pixel budget needs a capacity of at least 1")
        self.capacity = capacity
        self.peak = 0
        self._free = capacity
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = max(0, min(pixels, self.capacity))
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket or self._free < need:
                self._changed.wait()
            self._waiting.popleft()
            self._free -= need
            self.peak = max(self.peak, self.capacity - self._free)
            self._changed.notify_all()  # the next in line may fit too
        try:
            yield
        finally:
            with self._changed:
                self._free += need
                self._changed.notify_all()

    @property
    def in_use(self) -> int:
        with self._changed:
            return self.capacity - self._free


@cache
def shared_pixel_budget(capacity: int) -> PixelBudget:
    """The process's budget of that capacity: every pipeline of the process shares it.

    Creating it also makes freed pixel memory leave the process (``release_freed_memory``):
    a bound on pixels held means little if freed ones stay resident.
    """
    release_freed_memory()
    return PixelBudget(capacity)


@cache
def release_freed_memory() -> bool:
    """Make glibc return large freed blocks to the OS at once; True where it applies.

    glibc raises its mmap threshold after the first large free, and from then on
    serves 16 MB blocks (Pillow's) from per-thread heaps that keep what is freed:
    a worker that decoded 7000x7000 PNGs in eight threads stayed at 1.2 GB after
    them, against 70 MB with the threshold pinned at 1 MB (blocks above it are
    mapped and unmapped, which costs nothing next to decoding them).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20))
    except (OSError, AttributeError):  # not glibc: nothing to pin
        return False


@dataclass(frozen=True)
class ImageLimits:
    """What an untrusted image may be (DESIGN §10); breaking a limit fails that image only."""

    max_bytes: int
    max_pixels: int
    allowed_formats: frozenset[str]
    """Pillow format names in upper case: JPEG, PNG, WEBP, GIF, BMP, TIFF, MPO, ..."""
    pixel_budget: PixelBudget | None = field(default=None, compare=False)
    """Decoded pixels all threads may hold at once (None: no process-wide cap)."""

    def __post_init__(self) -> None:
        # A misspelt name ("JPG") would otherwise reject every such image at run time.
        unknown = self.allowed_formats - set(Image.registered_extensions().values())
        if unknown:
            raise ValueError(f"unknown image format names: {', '.join(sorted(unknown))}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """The limits set by ``max_image_bytes``, ``max_image_pixels``, ``allowed_formats``
        and ``decode_pixel_budget`` (the process's shared budget)."""
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            allowed_formats=frozenset(name.upper() for name in settings.allowed_formats),
            pixel_budget=shared_pixel_budget(settings.decode_pixel_budget),
        )


@dataclass(frozen=True)
class SourceInfo:
    """What the file held before preprocessing: its upright size and its format.

    The domain check compares these with what the model saw in training: a
    3024x4032 photo fitted to 32x32 pixels looks nothing like a 32x32 original.
    """

    width: int
    height: int
    format: str

    def describe(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class PreparedImage:
    """A model's input pixels (H, W, 3 uint8) and the source they came from."""

    pixels: npt.NDArray[np.uint8]
    source: SourceInfo


def decode_image(
    data: bytes, limits: ImageLimits, target_size: tuple[int, int] | None = None
) -> Image.Image:
    """``decode_image_with_source`` without the source description."""
    return decode_image_with_source(data, limits, target_size)[0]


def decode_image_with_source(
    data: bytes, limits: ImageLimits, target_size: tuple[int, int] | None = None
) -> tuple[Image.Image, SourceInfo]:
    """Decode untrusted bytes into an upright 8-bit RGB image (first frame of animations).

    ``target_size`` (height, width) is the size preprocessing will produce. A JPEG at
    least twice that size is then decoded at 1/2, 1/4 or 1/8 scale by the DCT (draft
    mode): several times faster, and never smaller than the target in either dimension.

    Raises ``ImageFailure`` with code empty_file, too_large, too_many_pixels,
    unsupported_format or corrupt_image.
    """
    with _decoded(data, limits, target_size) as decoded:
        return decoded


@contextmanager
def _decoded(
    data: bytes, limits: ImageLimits, target_size: tuple[int, int] | None
) -> Iterator[tuple[Image.Image, SourceInfo]]:
    """``decode_image_with_source``, holding the image's pixels from the budget until the
    block ends."""
    _check_bytes(data, limits)
    _let_pillow_reach(limits.max_pixels)
    try:
        with _open(data, limits) as image:
            _check_pixels(image, limits)
            source = _source_info(image)
            if target_size is not None and image.format in _DRAFTABLE_FORMATS:
                image.draft("RGB", _draft_size(image, target_size))
            with _held(limits, image.width * image.height * _frames_held(image)):
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                yield _to_rgb(image), source
    # Pillow's own guard can still fire inside open() or while loading GIF and TIFF frames;
    # the warning is an exception only where warnings are errors.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageFailure(
            ErrorCode.TOO_MANY_PIXELS,
            f"the image has more pixels than the limit of {limits.max_pixels}",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageFailure(
            ErrorCode.CORRUPT_IMAGE, f"the image data is damaged or truncated ({exc})"
        ) from exc


def preprocess(image: Image.Image, spec: Preprocessing) -> npt.NDArray[np.uint8]:
    """Fit an RGB image to ``spec.input_size``: a uint8 array of shape (height, width, 3).

    ``center_crop`` keeps the largest centred region with the target's aspect ratio,
    ``stretch`` keeps everything and distorts. An image that needs no scaling is not
    resampled, so its pixels arrive unchanged. Normalisation (``mean``, ``std``) is left
    to the engine, which does it per batch on the device and so moves 1 byte per channel.
    """
    if image.mode != "RGB":
        raise ValueError(f"preprocess needs an RGB image (see decode_image), not {image.mode}")
    height, width = spec.input_size
    if image.size == (width, height):
        return np.array(image)
    if spec.resize == "center_crop":
        box = _centred_box(image.size, (width, height))
    else:
        box = (0, 0, image.width, image.height)
    # A box already at the target size is copied exactly: every filter has weight 1 at 0.
    fitted = image.resize((width, height), _RESAMPLING[spec.interpolation], box=box)
    # np.array copies: the view Pillow exposes is read-only, and torch.from_numpy warns on it.
    return np.array(fitted)


def load_image_array(
    data: bytes, limits: ImageLimits, spec: Preprocessing
) -> npt.NDArray[np.uint8]:
    """``decode_image`` then ``preprocess``, letting large JPEGs decode at reduced scale."""
    return load_image(data, limits, spec).pixels


def load_image(data: bytes, limits: ImageLimits, spec: Preprocessing) -> PreparedImage:
    """``load_image_array`` that also says what the source image was.

    The decoded image's pixels are held from ``limits.pixel_budget`` until the
    small array is made. JPEGs take the simplejpeg path when it applies.
    """
    fast = _fast_jpeg(data, limits, spec)
    if fast is not None:
        return fast
    with _decoded(data, limits, spec.input_size) as (image, source):
        return PreparedImage(preprocess(image, spec), source)


def preprocess_array(pixels: npt.NDArray[np.uint8], spec: Preprocessing) -> npt.NDArray[np.uint8]:
    """``preprocess`` for an (H, W, 3) uint8 array: returned as is when already the right size."""
    height, width = spec.input_size
    if pixels.shape[:2] == (height, width):
        return pixels
    return preprocess(Image.fromarray(pixels), spec)


def _check_bytes(data: bytes, limits: ImageLimits) -> None:
    if not data:
        raise ImageFailure(ErrorCode.EMPTY_FILE, "the file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageFailure(
            ErrorCode.TOO_LARGE,
            f"the file is {len(data)} bytes, more than the limit of {limits.max_bytes}",
        )


@contextmanager
def _held(limits: ImageLimits, pixels: int) -> Iterator[None]:
    if limits.pixel_budget is None:
        yield
    else:
        with limits.pixel_budget.hold(pixels):
            yield


def _frames_held(image: Image.Image) -> int:
    """Pixel planes a decode may hold at once, in units of one RGB plane (4 bytes a pixel).

    Wide gray values are rescaled through numpy arrays of 4-8 bytes a pixel; palette
    and transparent images are converted, then composited over white: copies.
    """
    if image.mode in _WIDE_GRAY_MODES:
        return 3
    return 2 if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info else 1


# --- the simplejpeg path --------------------------------------------------------------------


def _fast_jpeg(data: bytes, limits: ImageLimits, spec: Preprocessing) -> PreparedImage | None:
    """A plain JPEG decoded and preprocessed through simplejpeg, or None to use Pillow.

    None whenever Pillow could answer differently: no simplejpeg, JPEG not allowed,
    an EXIF orientation other than upright, MPO, CMYK/YCCK, or data simplejpeg
    refuses (Pillow then says whether it is corrupt). Limits are checked as on
    Pillow's path, and the same errors raised.
    """
    if simplejpeg is None or not data.startswith(_JPEG_SOI) or "JPEG" not in limits.allowed_formats:
        return None
    _check_bytes(data, limits)
    if not _plain_jpeg(data):
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colour not in _SIMPLEJPEG_COLOURS:
        return None
    if width * height > limits.max_pixels:
        raise ImageFailure(
            ErrorCode.TOO_MANY_PIXELS,
            f"the image is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {limits.max_pixels}",
        )
    target_height, target_width = spec.input_size
    scale = _dct_scale(width, height, target_width, target_height)
    scaled_width, scaled_height = -(-width // scale), -(-height // scale)
    with _held(limits, scaled_width * scaled_height):
        try:
            pixels = simplejpeg.decode_jpeg(
                data, colorspace="RGB", min_height=scaled_height, min_width=scaled_width
            )
        except ValueError:
            return None
        return PreparedImage(preprocess_array(pixels, spec), SourceInfo(width, height, "JPEG"))


def _dct_scale(width: int, height: int, target_width: int, target_height: int) -> int:
    """Pillow's ``draft`` choice: the largest of 8, 4, 2, 1 keeping both sides >= the target."""
    ratio = min(width // max(target_width, 1), height // max(target_height, 1))
    return next(scale for scale in (8, 4, 2, 1) if ratio >= scale or scale == 1)


def _plain_jpeg(data: bytes) -> bool:
    """No EXIF orientation but upright and no MPO index in the segments before the scan."""
    position = 2
    end = len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan, end of image
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            position += 2
            continue
        length = (data[position + 2] << 8) | data[position + 3]
        segment = data[position + 4 : position + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            exif = Image.Exif()
            try:
                exif.load(segment)
            except (OSError, SyntaxError, ValueError, struct_error):
                return False
            if exif.get(ExifTags.Base.Orientation, 1) != 1:
                return False
        elif marker == 0xE2 and segment.startswith(b"MPF\x00"):
            return False
        position += 2 + length
    return False


def _let_pillow_reach(max_pixels: int) -> None:
    """Raise Pillow's process-wide bomb threshold to at least ``max_pixels``.

    Inside ``Image.open`` Pillow warns above ``Image.MAX_IMAGE_PIXELS`` (89 M by
    default) and refuses above twice that, before our header check can run, so a
    configured limit above Pillow's would be cut short. The threshold is only ever
    raised, never lowered or disabled: other Pillow users keep a guard no looser than
    the configured one, and with the default limit (50 M) it is never touched.
    """
    with _pillow_limit_lock:  # read-modify-write: concurrent callers must not undo a raise
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


@cache
def _openers(allowed_formats: frozenset[str]) -> tuple[str, ...]:
    """Pillow's opener names for the allowed formats (MPO files come from JPEG's opener)."""
    Image.init()
    wanted = {"JPEG" if name == "MPO" else name for name in allowed_formats}
    return tuple(sorted(wanted & Image.OPEN.keys()))


def _open(data: bytes, limits: ImageLimits) -> ImageFile.ImageFile:
    """Parse the header with the allowed formats' parsers only; no pixels are read yet."""
    openers = _openers(limits.allowed_formats)
    try:
        image = Image.open(io.BytesIO(data), formats=openers)
    except UnidentifiedImageError as exc:
        raise _unidentified(data, openers, limits) from exc
    # One opener can yield several formats: JPEG's also yields MPO.
    if image.format not in limits.allowed_formats:
        raise ImageFailure(ErrorCode.UNSUPPORTED_FORMAT, f"{image.format} images are not allowed")
    return image


def _unidentified(data: bytes, openers: tuple[str, ...], limits: ImageLimits) -> ImageFailure:
    """Tell a damaged header of an allowed format (corrupt) from anything else (unsupported)."""
    for name in openers:
        accept = Image.OPEN[name][1]
        if accept is not None and accept(data[:16]):
            return ImageFailure(
                ErrorCode.CORRUPT_IMAGE, f"the data starts like a {name} file but cannot be read"
            )
    allowed = ", ".join(sorted(limits.allowed_formats))
    return ImageFailure(
        ErrorCode.UNSUPPORTED_FORMAT, f"the data is not an image in an allowed format ({allowed})"
    )


def _check_pixels(image: Image.Image, limits: ImageLimits) -> None:
    """Refuse decompression bombs by the header's dimensions, before pixels are allocated."""
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageFailure(
            ErrorCode.TOO_MANY_PIXELS,
            f"the image is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {limits.max_pixels}",
        )


def _source_info(image: ImageFile.ImageFile) -> SourceInfo:
    """The header's size as the image is shown (EXIF rotation applied) and its format."""
    width, height = image.size
    if image.getexif().get(ExifTags.Base.Orientation) in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return SourceInfo(width=width, height=height, format=str(image.format or "unknown"))


def _draft_size(image: Image.Image, target_size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) the JPEG decoder must not go below, in stored orientation."""
    height, width = target_size
    # EXIF rotation is applied after decoding, so the stored width becomes the shown height.
    if image.getexif().get(ExifTags.Base.Orientation) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _centred_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred box in ``size`` with the aspect ratio of ``target`` (both w, h)."""
    width, height = size
    target_width, target_height = target
    box_width = max(1, min(width, round(height * target_width / target_height)))
    box_height = max(1, min(height, round(width * target_height / target_width)))
    left, top = (width - box_width) // 2, (height - box_height) // 2
    return left, top, left + box_width, top + box_height


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows it: wide values scaled down, transparency over white."""
    if image.mode in _WIDE_GRAY_MODES:
        image = _to_8bit_gray(image)
    if image.has_transparency_data:  # also RGB, L and P with a PNG colour key
        # Transparent pixels hold arbitrary colour, often black; a browser shows the page
        # behind them, so composite onto a white page instead of dropping alpha.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba)
        return canvas
    if image.mode == "RGB":
        return image
    # P, L, 1, CMYK, YCbCr, LAB and HSV all have direct conversions in Pillow.
    return image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """Map a 16-bit, 32-bit or float gray image onto 0..255 by its value range.

    Pillow's own conversion clips at 255, which turns most 16-bit images white.
    I;16: the full 16-bit range (65535 -> 255). I (32-bit): the narrowest of 8, 16
    or 31 bits that holds the brightest pixel, as such images mostly carry 8- or
    16-bit data. F: values all within [0, 1] are taken as normalised and scaled by
    255; anything else as 0..255 and clipped (NaN -> 0).
    """
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values)
        scale = 255.0 if values.min() >= 0 and values.max() <= 1 else 1.0
        gray = np.clip(np.rint(values * scale), 0, 255)
    else:
        peak = int(values.max())
        if image.mode.startswith("I;16"):
            bits = 16
        else:
            bits = 8 if peak < 256 else 16 if peak < 65536 else 31
        gray = np.clip(values >> (bits - 8), 0, 255)
    return Image.fromarray(gray.astype(np.uint8))
