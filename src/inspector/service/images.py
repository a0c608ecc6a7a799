"""Uploaded bytes -> RGB uint8, with the size checked from the header before anything is decompressed.

A 60000x60000 PNG is a few hundred kilobytes but 10 GiB decoded; reading width and height from the header
first (Pillow opens lazily) turns such a file into a 413 instead of an out-of-memory kill. Decoding itself
is the same as in fit (`decode_image`), so gray, RGBA and 16-bit images are handled identically.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from inspector.data.io import ImageReadError, decode_image
from inspector.service.errors import BadImage, TooLarge

# Magic bytes -> (file suffix, media type) of the formats fit reads back from a folder.
_MAGIC: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, ".png", "image/png"),
    (b"\xff\xd8\xff", 0, ".jpg", "image/jpeg"),
    (b"BM", 0, ".bmp", "image/bmp"),
    (b"II*\x00", 0, ".tif", "image/tiff"),
    (b"MM\x00*", 0, ".tif", "image/tiff"),
    (b"WEBP", 8, ".webp", "image/webp"),
    (b"P5", 0, ".pgm", "image/x-portable-graymap"),
    (b"P6", 0, ".ppm", "image/x-portable-pixmap"),
)


@dataclass
class Upload:
    """A decoded upload and how to store it: the original bytes when fit can read their format back."""

    rgb: np.ndarray
    data: bytes
    suffix: str
    media_type: str


def sniff(data: bytes) -> tuple[str, str] | None:
    """(suffix, media type) from the first bytes, or None for a format outside the list."""
    for magic, offset, suffix, media_type in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return suffix, media_type
    return None


def header_pixels(data: bytes) -> int | None:
    """width x height from the header, without decoding; None when Pillow does not know the format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a hostile header warns about itself; only its size matters here
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None  # OpenCV may still read it; the decoded size is checked then
    return width * height


def decode_upload(data: bytes, max_pixels: int) -> Upload:
    """Check, decode and classify one upload; raises BadImage (422) or TooLarge (413)."""
    if not data:
        raise BadImage("empty image")
    pixels = header_pixels(data)
    if pixels is not None and pixels > max_pixels:
        raise TooLarge(f"image has {pixels} pixels; this service accepts at most {max_pixels} (max_image_pixels)")
    try:
        rgb = decode_image(data, "upload")
    except (ImageReadError, cv2.error) as exc:
        raise BadImage(str(exc)) from exc
    if rgb.shape[0] * rgb.shape[1] > max_pixels:
        raise TooLarge(f"image has {rgb.shape[0] * rgb.shape[1]} pixels; at most {max_pixels} (max_image_pixels)")
    known = sniff(data)
    if known is not None:
        return Upload(rgb, data, *known)
    # A format fit cannot read back from a folder (e.g. JPEG 2000): keep a lossless PNG of what was scored.
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BadImage("image decoded but cannot be stored")
    return Upload(rgb, png.tobytes(), ".png", "image/png")
