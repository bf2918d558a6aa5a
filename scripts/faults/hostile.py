"""Hostile inputs, made in code at run time: bombs, truncations, huge metadata, odd tar members.

Nothing here is checked in: each file is built from a few bytes of recipe, so the
suite carries no binary fixtures and a bomb never sits on anyone's disk. A
``Hostile`` names the file, its bytes and what the worker may answer for it
(``codes``: the error codes that are a correct answer; ``None`` means a label
is also correct, e.g. a 7000x7000 image within the pixel limit).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

LEGAL_LARGE_SIDE = 7000
"""A 7000x7000 image (49 Mpx) is just legal under the default 50 Mpx limit: the memory case."""

NOT_AN_IMAGE = frozenset({"unsupported_format", "corrupt_image"})
BROKEN = frozenset({"corrupt_image", "unsupported_format", "empty_file"})


@dataclass(frozen=True)
class Hostile:
    """One hostile file: its name, bytes and the answers that count as handled well."""

    name: str
    data: bytes
    codes: frozenset[str] | None
    """Acceptable error codes; None = any answer but ``internal_error`` (a label is fine)."""


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _zeros_compressed(total: int, block: int = 1 << 20) -> bytes:
    """``total`` zero bytes through zlib, a block at a time (never all in memory)."""
    compressor = zlib.compressobj(9)
    out = []
    zeros = bytes(block)
    left = total
    while left > 0:
        step = min(block, left)
        out.append(compressor.compress(zeros[:step]))
        left -= step
    out.append(compressor.flush())
    return b"".join(out)


def png_of_zeros(width: int, height: int, channels: int = 1, extra: bytes = b"") -> bytes:
    """A valid PNG of black pixels, written by hand: its IDAT is a zlib stream of zeros
    (a filter byte of 0 per row), so a 30000x30000 image is under a megabyte."""
    colour = {1: 0, 3: 2}[channels]
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    data = _zeros_compressed(height * (width * channels + 1))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def gif_bomb(side: int = 65535) -> bytes:
    """A 1x1 GIF whose screen and image descriptors claim ``side`` x ``side`` pixels."""
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", side, side)  # logical screen descriptor
    descriptor = data.index(b"\x2c", 13)  # the first image descriptor follows the colour table
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", side, side)
    return bytes(data)


def tiff_bomb(side: int = 60000) -> bytes:
    """A deflate-compressed greyscale TIFF that claims ``side`` x ``side`` pixels (3.6 Gpx)
    with one strip of a few kB."""
    strip = _zeros_compressed(side * 64)  # only the first rows: enough to start decoding
    entries = [
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, side),  # RowsPerStrip
        (279, 4, 1, len(strip)),  # StripByteCounts
    ]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = ifd_offset + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = strip_offset
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", ifd_offset) + ifd + strip


def _noise(side: int, seed: int = 3) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def good_images() -> dict[str, bytes]:
    """A small valid image in every allowed format (64x64 noise)."""
    image = _noise(64)
    frames = [image, _noise(64, seed=4)]
    return {
        "good.jpg": encoded(image, "JPEG", quality=90),
        "good.png": encoded(image, "PNG"),
        "good.webp": encoded(image, "WEBP", quality=80),
        "good.gif": encoded(image.convert("P"), "GIF"),
        "good.bmp": encoded(image, "BMP"),
        "good.tiff": encoded(image, "TIFF"),
        "good.mpo": encoded(frames[0], "MPO", save_all=True, append_images=frames[1:]),
    }


def jpeg_with_icc(size_bytes: int) -> bytes:
    """A JPEG carrying an ICC profile of ``size_bytes`` (Pillow splits it over APP2s)."""
    profile = b"\0" * size_bytes
    return encoded(_noise(32), "JPEG", icc_profile=profile)


def jpeg_with_exif(size_bytes: int) -> bytes:
    """A JPEG with an APP1 EXIF segment as large as the format allows (about 64 kB)."""
    exif = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + b"\0" * (size_bytes - 14)
    return encoded(_noise(32), "JPEG", exif=exif[: min(size_bytes, 65533)])


def png_with_chunk_bomb(kind: bytes, payload_size: int) -> bytes:
    """A tiny PNG with a compressed metadata chunk (zTXt or iCCP) that inflates to
    ``payload_size`` bytes: a decompression bomb in the metadata, not the pixels."""
    compressed = _zeros_compressed(payload_size)
    keyword = b"Comment" if kind == b"zTXt" else b"icc"
    extra = _chunk(kind, keyword + b"\0\0" + compressed)
    return png_of_zeros(32, 32, extra=extra)


def png_with_exif(size_bytes: int) -> bytes:
    """A tiny PNG with an eXIf chunk of ``size_bytes``."""
    exif = b"II*\0" + struct.pack("<I", 8) + b"\0" * (size_bytes - 8)
    return png_of_zeros(32, 32, extra=_chunk(b"eXIf", exif))


def animated_gif(frames: int, side: int = 32) -> bytes:
    """``frames`` frames, each one pixel different from the last (so none is merged away)."""
    images = []
    for i in range(frames):
        frame = Image.new("L", (side, side), 0)
        frame.putpixel((i % side, (i // side) % side), 255)
        images.append(frame)
    return encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


def animated_png(frames: int, side: int = 32) -> bytes:
    images = [Image.new("RGB", (side, side), (i % 256, 0, 0)) for i in range(frames)]
    return encoded(images[0], "PNG", save_all=True, append_images=images[1:], duration=10)


def animated_webp(frames: int, side: int = 32) -> bytes:
    images = [Image.new("RGB", (side, side), (0, i % 256, 0)) for i in range(frames)]
    return encoded(images[0], "WEBP", save_all=True, append_images=images[1:], duration=10)


def hostile_files(large: int = 2) -> Iterator[Hostile]:
    """Every hostile file; ``large`` = how many legal 7000x7000 PNGs (the memory case)."""
    too_many = frozenset({"too_many_pixels"})
    yield Hostile("bomb-png-30000.png", png_of_zeros(30000, 30000), too_many)
    yield Hostile("bomb-png-rgb-20000.png", png_of_zeros(20000, 20000, 3), too_many)
    yield Hostile("bomb-gif-65535.gif", gif_bomb(), too_many | NOT_AN_IMAGE)
    yield Hostile("bomb-tiff-60000.tiff", tiff_bomb(), too_many | NOT_AN_IMAGE)
    yield Hostile("zero-bytes.jpg", b"", frozenset({"empty_file"}))
    yield Hostile("zero-bytes.png", b"", frozenset({"empty_file"}))
    for name, data in good_images().items():
        ext = name.rsplit(".", 1)[1]
        yield Hostile(f"truncated-half.{ext}", data[: len(data) // 2], BROKEN)
        yield Hostile(f"truncated-header.{ext}", data[:16], BROKEN)
        yield Hostile(name, data, None)
    yield Hostile("garbage.jpg", b"definitely not an image\n" * 40, NOT_AN_IMAGE)
    yield Hostile("pdf-as-jpg.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 200, NOT_AN_IMAGE)
    yield Hostile("ico-not-allowed.ico", encoded(_noise(32), "ICO"), NOT_AN_IMAGE)
    yield Hostile("huge-icc-jpeg-4mb.jpg", jpeg_with_icc(4 << 20), None)
    yield Hostile("huge-exif-jpeg-64kb.jpg", jpeg_with_exif(65533), None)
    yield Hostile("huge-exif-png-8mb.png", png_with_exif(8 << 20), None)
    yield Hostile("ztxt-bomb-png-200mb.png", png_with_chunk_bomb(b"zTXt", 200 << 20), None)
    yield Hostile("iccp-bomb-png-200mb.png", png_with_chunk_bomb(b"iCCP", 200 << 20), None)
    yield Hostile("animated-5000-frames.gif", animated_gif(5000), None)
    yield Hostile("animated-3000-frames.png", animated_png(3000), None)
    yield Hostile("animated-2000-frames.webp", animated_webp(2000), None)
    for index in range(large):
        side = LEGAL_LARGE_SIDE
        yield Hostile(f"legal-large-{index}.png", png_of_zeros(side, side, 3), None)


# --- tar archives ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TarMember:
    """A member of the hostile tar: its name as the worker reports it, and its type."""

    name: str
    kind: str
    """regular, directory, symlink, hardlink, fifo, chardev, blockdev"""


def hostile_tar() -> tuple[bytes, list[TarMember]]:
    """An uncompressed tar with a member of every type, long names and escaping paths."""
    image = good_images()["good.jpg"]
    members: list[TarMember] = []
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:

        def add(info: tarfile.TarInfo, kind: str, data: bytes | None = None) -> None:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
            members.append(TarMember(info.name.rstrip("/"), kind))

        add(tarfile.TarInfo("REAL/a.jpg"), "regular", image)
        directory = tarfile.TarInfo("REAL/sub")
        directory.type = tarfile.DIRTYPE
        add(directory, "directory")
        for name, kind, link in (
            ("REAL/link-to-a.jpg", tarfile.SYMTYPE, "a.jpg"),
            ("REAL/link-to-passwd.jpg", tarfile.SYMTYPE, "/etc/passwd"),
            ("REAL/hard-a.jpg", tarfile.LNKTYPE, "REAL/a.jpg"),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            add(info, "symlink" if kind == tarfile.SYMTYPE else "hardlink")
        for name, kind, label in (
            ("REAL/fifo.jpg", tarfile.FIFOTYPE, "fifo"),
            ("REAL/null.jpg", tarfile.CHRTYPE, "chardev"),
            ("REAL/sda.jpg", tarfile.BLKTYPE, "blockdev"),
        ):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.devmajor, info.devminor = (1, 3) if kind == tarfile.CHRTYPE else (8, 0)
            add(info, label)
        add(tarfile.TarInfo("REAL/" + "long-" * 60 + ".jpg"), "regular", image)
        add(tarfile.TarInfo("REAL/" + "/".join(["deep"] * 40) + "/x.jpg"), "regular", image)
        add(tarfile.TarInfo("REAL/empty.jpg"), "regular", b"")
        add(tarfile.TarInfo("REAL/truncated.jpg"), "regular", image[: len(image) // 2])
        add(tarfile.TarInfo("../escape.jpg"), "regular", image)
        add(tarfile.TarInfo("/absolute.jpg"), "regular", image)
    return buffer.getvalue(), members
