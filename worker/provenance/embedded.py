"""Metadata written into the file itself: PNG text chunks, the XMP packet, EXIF software tags.

Everything here reads attacker-controlled bytes, so every read is bounded:
at most ``MAX_CHUNKS`` PNG chunks are walked, a compressed text chunk inflates to
at most ``MAX_TEXT_BYTES``, the XMP packet is at most ``MAX_XMP_BYTES``, and the
XMP is searched with regular expressions instead of an XML parser (no entity
expansion, no external references). Malformed input ends the walk; the callers
treat whatever was found before it as all there is.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CHUNKS = 10_000
MAX_TEXT_BYTES = 1 << 20
MAX_XMP_BYTES = 1 << 20
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_XMP_START = re.compile(rb"<x:xmpmeta[\s>]")
_XMP_END = b"</x:xmpmeta>"


@dataclass(frozen=True)
class TextChunk:
    """One PNG text chunk: its keyword and (decoded, bounded) text."""

    key: str
    text: str


def png_text_chunks(data: bytes) -> Iterator[TextChunk]:
    """The text chunks of a PNG (tEXt, zTXt, iTXt), in file order; nothing if not a PNG."""
    for kind, start, end in _png_chunks(data):
        if kind in _TEXT_CHUNKS:
            chunk = _decode_text_chunk(kind, data[start:end])
            if chunk is not None:
                yield chunk


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of a PNG's chunks up to IEND, at most ``MAX_CHUNKS``;
    stops where the file stops making sense (a length past the end)."""
    if not data.startswith(PNG_SIGNATURE):
        return
    offset = len(PNG_SIGNATURE)
    for _ in range(MAX_CHUNKS):
        if offset + 8 > len(data):
            return
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body_end = offset + 8 + length
        if body_end + 4 > len(data):
            return
        if kind == b"IEND":
            return
        yield kind, offset + 8, body_end
        offset = body_end + 4  # skip the CRC


def _decode_text_chunk(kind: bytes, body: bytes) -> TextChunk | None:
    key, sep, rest = body.partition(b"\x00")
    if not sep or not 1 <= len(key) <= 79:
        return None
    name = key.decode("latin-1")
    if kind == b"tEXt":
        return TextChunk(name, rest[:MAX_TEXT_BYTES].decode("latin-1"))
    if kind == b"zTXt":
        text = _inflate(rest[1:]) if rest[:1] == b"\x00" else None
        return None if text is None else TextChunk(name, text.decode("latin-1"))
    # iTXt: compression flag, method, language tag \0, translated keyword \0, text (UTF-8)
    if len(rest) < 2:
        return None
    compressed, method = rest[0], rest[1]
    _, _, tail = rest[2:].partition(b"\x00")
    _, _, text_bytes = tail.partition(b"\x00")
    if compressed:
        inflated = _inflate(text_bytes) if method == 0 else None
        if inflated is None:
            return None
        text_bytes = inflated
    return TextChunk(name, text_bytes[:MAX_TEXT_BYTES].decode("utf-8", errors="replace"))


def _inflate(data: bytes) -> bytes | None:
    """zlib data inflated to at most ``MAX_TEXT_BYTES`` (a zip bomb stops there)."""
    try:
        return zlib.decompressobj().decompress(data, MAX_TEXT_BYTES)
    except zlib.error:
        return None


def xmp_packet(data: bytes) -> str | None:
    """The first XMP packet in the file (any format keeps it as plain XML), bounded."""
    start = _XMP_START.search(data)
    if start is None:
        return None
    end = data.find(_XMP_END, start.start(), start.start() + MAX_XMP_BYTES)
    if end < 0:
        return None
    return data[start.start() : end + len(_XMP_END)].decode("utf-8", errors="replace")


def xmp_value(packet: str, name: str) -> str | None:
    """A simple property of an XMP packet, written as attribute or element:
    ``Iptc4xmpExt:DigitalSourceType="..."`` or ``<xmp:CreatorTool>...</xmp:CreatorTool>``
    (also inside an ``rdf:Alt``/``rdf:li`` or as ``rdf:resource``)."""
    qname = re.escape(name)
    patterns = (
        rf"{qname}\s*=\s*\"([^\"]{{1,2000}})\"",
        rf"{qname}\s*=\s*'([^']{{1,2000}})'",
        rf"<{qname}\s+rdf:resource\s*=\s*\"([^\"]{{1,2000}})\"",
        rf"<{qname}>\s*(?:<rdf:(?:Alt|Seq|Bag)>\s*<rdf:li[^>]{{0,200}}>)?([^<]{{1,2000}})<",
    )
    for pattern in patterns:
        match = re.search(pattern, packet)
        if match:
            return _unescape(match.group(1).strip())
    return None


def _unescape(text: str) -> str:
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'")):
        text = text.replace(entity, char)
    return text.replace("&amp;", "&")


EXIF_SOFTWARE = 0x0131
EXIF_ARTIST = 0x013B
EXIF_IMAGE_DESCRIPTION = 0x010E
EXIF_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769


@dataclass(frozen=True)
class ExifText:
    """The EXIF text fields generators write: Software, ImageDescription, UserComment."""

    software: str | None
    description: str | None
    user_comment: str | None


_JPEG_EXIF_WINDOW = 1 << 17
"""A JPEG's APP1 EXIF segment comes first (at most 64 KiB, after at most an APP0)."""
_HEADER_EXIF = (b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
"""JPEG and TIFF keep EXIF before the pixels; Pillow reads it from the header alone."""


def exif_text(data: bytes) -> ExifText | None:
    """EXIF text fields of a JPEG, TIFF, WebP or PNG, without decoding any pixels.

    Pillow's ``getexif`` on a PNG or WebP may load the whole image to find the
    block (4 ms for a 1-megapixel PNG), so those formats' EXIF chunk is found here
    and parsed alone.
    """
    try:
        if data.startswith(_HEADER_EXIF):
            if data.startswith(b"\xff\xd8") and b"Exif\x00\x00" not in data[:_JPEG_EXIF_WINDOW]:
                return None  # no APP1 EXIF segment: skip parsing the header (most thumbnails)
            with Image.open(io.BytesIO(data)) as image:
                exif = image.getexif()
        else:
            block = _exif_chunk(data)
            if block is None:
                return None
            exif = Image.Exif()
            exif.load(block)
        if not exif:
            return None
        comment = exif.get_ifd(_EXIF_IFD).get(EXIF_USER_COMMENT)
        return ExifText(
            software=_exif_string(exif.get(EXIF_SOFTWARE)),
            description=_exif_string(exif.get(EXIF_IMAGE_DESCRIPTION)),
            user_comment=_user_comment(comment),
        )
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError, struct.error):
        return None  # a damaged header: no EXIF is the answer (the reader logs anything else)


def _exif_chunk(data: bytes) -> bytes | None:
    """The EXIF block of a PNG (``eXIf`` chunk) or WebP (``EXIF`` chunk), if any."""
    if data.startswith(PNG_SIGNATURE):
        for kind, start, end in _png_chunks(data):
            if kind == b"eXIf":
                return data[start:end]
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        offset = 12
        for _ in range(MAX_CHUNKS):
            if offset + 8 > len(data):
                return None
            kind, size = (
                data[offset : offset + 4],
                struct.unpack("<I", data[offset + 4 : offset + 8])[0],
            )
            body = data[offset + 8 : offset + 8 + size]
            if kind == b"EXIF":
                return body[6:] if body.startswith(b"Exif\x00\x00") else body
            offset += 8 + size + (size & 1)
    return None


def _exif_string(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    return value.strip("\x00 ")[:MAX_TEXT_BYTES] or None


def _user_comment(value: object) -> str | None:
    """UserComment starts with an 8-byte character code: ASCII, UNICODE (UTF-16) or none."""
    if isinstance(value, str):
        return value.strip("\x00 ") or None
    if not isinstance(value, bytes) or len(value) < 8:
        return None
    code, body = value[:8], value[8 : 8 + MAX_TEXT_BYTES]
    if code.startswith(b"UNICODE"):
        big = body.decode("utf-16-be", errors="replace")
        little = body.decode("utf-16-le", errors="replace")
        text = big if big.isascii() or not little.isascii() else little
    else:
        text = body.decode("utf-8", errors="replace")
    return text.strip("\x00 ") or None
