"""The service's image decoding under random and mutated bytes: every upload ends as an RGB image within the pixel
limit or as a 413/422, never another exception, a hang or unbounded memory.

Seeds are real encodings of the formats cameras send (PNG 8/16-bit, gray, palette, RGBA; JPEG RGB and CMYK;
multi-page TIFF; BMP; WebP; PGM); hypothesis truncates them, flips bytes, swaps headers and invents bytes.
"""

from __future__ import annotations

import io
import resource
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from inspector.service.errors import BadImage, TooLarge
from inspector.service.images import decode_upload

MAX_PIXELS = 1_000_000
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 65536, (24, 32), dtype=np.uint16))
    return {
        "png": _encode(rgb, "PNG"),
        "png_gray16": _encode(gray16, "PNG"),
        "png_palette": _encode(rgb.convert("P"), "PNG"),
        "png_rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=90),
        "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "tiff_pages": _encode(rgb, "TIFF", save_all=True, append_images=[rgb.rotate(90, expand=True)]),
        "bmp": _encode(rgb, "BMP"),
        "webp": _encode(rgb, "WEBP", lossless=True),
        "pgm": _encode(rgb.convert("L"), "PPM"),
    }


SEEDS = _seeds()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with a valid checksum, and one tiny data chunk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )


def _decodes_or_refuses(data: bytes) -> str:
    """The property: an RGB uint8 image within the limit, or BadImage (422) / TooLarge (413); which one."""
    try:
        upload = decode_upload(data, MAX_PIXELS)
    except (BadImage, TooLarge) as refusal:
        return str(refusal.status)
    assert upload.rgb.dtype == np.uint8 and upload.rgb.ndim == 3 and upload.rgb.shape[2] == 3
    assert upload.rgb.shape[0] * upload.rgb.shape[1] <= MAX_PIXELS
    assert upload.data and upload.suffix.startswith(".") and upload.media_type.startswith("image/")
    return "decoded"


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_camera_format_decodes_to_rgb(name: str) -> None:
    upload = decode_upload(SEEDS[name], MAX_PIXELS)
    assert upload.rgb.dtype == np.uint8 and upload.rgb.shape[2] == 3
    assert upload.rgb.shape[:2] == (24, 32)  # the first page of the TIFF


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        (b"", BadImage),
        (_png_header(100_000, 100_000), TooLarge),  # 10 gigapixels claimed in a few bytes
        (_png_header(2000, 1000), TooLarge),  # just over the limit: refused from the header, not decoded
        (_png_header(0, 10), BadImage),
        (b"P5\n100000 100000\n255\n" + b"\0" * 100, TooLarge),
        (_encode(Image.new("RGB", (1, 1)), "PNG"), BadImage),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, BadImage),
        (b"\xff\xd8\xff" + b"\0" * 40, BadImage),
        (b"II*\x00" + b"\xff" * 40, BadImage),
    ],
    ids=[
        "empty",
        "png-bomb",
        "png-over-limit",
        "png-zero-width",
        "pgm-bomb",
        "one-pixel",
        "png-magic",
        "jpeg-magic",
        "tiff-magic",
    ],
)
def test_hostile_uploads_are_refused_with_their_status(data: bytes, refusal: type[Exception]) -> None:
    with pytest.raises(refusal):
        decode_upload(data, MAX_PIXELS)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.floats(0.0, 1.0))
@example("jpeg", 0.5)
@example("png_gray16", 0.9)
def test_truncated_uploads(name: str, keep: float) -> None:
    data = SEEDS[name]
    _decodes_or_refuses(data[: int(len(data) * keep)])


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12))
def test_uploads_with_flipped_bytes(name: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(SEEDS[name])
    for position, value in flips:
        data[position % len(data)] = value
    _decodes_or_refuses(bytes(data))


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.sampled_from(sorted(SEEDS)), st.integers(2, 64))
def test_uploads_with_another_formats_header(head: str, body: str, cut: int) -> None:
    _decodes_or_refuses(SEEDS[head][:cut] + SEEDS[body][cut:])


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    _decodes_or_refuses(data)


def test_decoding_hostile_uploads_keeps_memory_bounded() -> None:
    """A thousand mutated uploads, bombs among them: the process grows by less than a few decoded images.
    (`pytest -s` prints the outcomes and the growth: docs/reliability.md quotes them.)"""
    rng = np.random.default_rng(1)
    outcomes: Counter[str] = Counter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bombs = [_png_header(50_000, 50_000), b"P6\n60000 60000\n255\n" + b"\0" * 64]
    for i in range(1000):
        data = bytearray(SEEDS[sorted(SEEDS)[i % len(SEEDS)]])
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        outcomes[_decodes_or_refuses(bytes(data) if i % 50 else bombs[i // 50 % 2])] += 1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"1000 hostile uploads: {dict(outcomes)}; peak RSS +{grown_mb:.1f} MiB")
    assert grown_mb < 64, f"peak resident memory grew by {grown_mb:.0f} MiB decoding small hostile uploads"
