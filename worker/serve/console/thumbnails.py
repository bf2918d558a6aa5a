"""Small JPEG previews of dataset images, decoded under the same limits as classification.

Pages never hand the browser an uploaded file as is: each preview is decoded by
``worker.imaging`` (size, pixel and format limits) and re-encoded, so a file that
is not what it claims to be cannot reach the browser. Previews of tiny images
(CIFAKE is 32x32) are scaled up in the page with ``image-rendering: pixelated``.
"""

from __future__ import annotations

import io

from worker.imaging import ImageLimits, decode_image


def thumbnail_jpeg(data: bytes, size: int, limits: ImageLimits) -> bytes:
    """The image fitted into ``size`` x ``size`` pixels, as JPEG bytes (``ImageFailure``
    when it cannot be decoded under ``limits``)."""
    image = decode_image(data, limits, (size, size))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()
