"""Safe decoding of untrusted image bytes, and fitting them to a model's input.

Checks run cheapest first and before any pixel is allocated: the byte count,
then the format (only the allowed formats' parsers ever see the bytes), then
width x height from the header. Only then are pixels decoded. Every failure is
an ``ImageFailure`` with a stable code, so one bad image never fails a job.

``decode_image`` may be called from many threads at once: calls share no
mutable state (see ``_let_pillow_reach`` for the one exception), and Pillow
releases the GIL while it decodes, so a thread pool uses every core.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from contracts import ErrorCode, Preprocessing
from worker.errors import ImageFailure
from worker.settings import Settings

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


@dataclass(frozen=True)
class ImageLimits:
    """What an untrusted image may be (DESIGN §10); breaking a limit fails that image only."""

    max_bytes: int
    max_pixels: int
    allowed_formats: frozenset[str]
    """Pillow format names in upper case: JPEG, PNG, WEBP, GIF, BMP, TIFF, MPO, ..."""

    def __post_init__(self) -> None:
        # A misspelt name ("JPG") would otherwise reject every such image at run time.
        unknown = self.allowed_formats - set(Image.registered_extensions().values())
        if unknown:
            raise ValueError(f"unknown image format names: {', '.join(sorted(unknown))}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """The limits set by ``max_image_bytes``, ``max_image_pixels`` and ``allowed_formats``."""
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            allowed_formats=frozenset(name.upper() for name in settings.allowed_formats),
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
    if not data:
        raise ImageFailure(ErrorCode.EMPTY_FILE, "the file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageFailure(
            ErrorCode.TOO_LARGE,
            f"the file is {len(data)} bytes, more than the limit of {limits.max_bytes}",
        )
    _let_pillow_reach(limits.max_pixels)
    try:
        with _open(data, limits) as image:
            _check_pixels(image, limits)
            source = _source_info(image)
            if target_size is not None and image.format in _DRAFTABLE_FORMATS:
                image.draft("RGB", _draft_size(image, target_size))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image), source
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
    """``load_image_array`` that also says what the source image was."""
    image, source = decode_image_with_source(data, limits, target_size=spec.input_size)
    return PreparedImage(preprocess(image, spec), source)


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
