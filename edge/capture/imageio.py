"""Reading still images with a clear error for every way a file can be bad.

The dimensions are read from the file's header before anything is decoded, so a
decompression bomb (a small PNG declaring 50,000 × 50,000 pixels) is refused by its
header instead of allocating gigabytes, and an image too small to hold a face is
refused naming the file. Only the formats whose headers are read here are accepted:
JPEG, PNG, BMP and WebP.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageError, read_input_file
from edge.types import ImageArray

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_PIXELS = 40_000_000  # a 48 MP phone photo is refused: resize it first (120 MB decoded otherwise)
MIN_SIDE = 8
MAX_FILE_BYTES = 64 << 20


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            h, w = struct.unpack_from(">HH", data, i + 5)
            return int(w), int(h)
        if length < 2:
            return None
        i += 2 + length
    return None


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the header alone; None when the format is not one read here."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            w, h = struct.unpack_from(">II", data, 16)
            return "PNG", int(w), int(h)
        if data.startswith(b"\xff\xd8"):
            size = _jpeg_size(data)
            return ("JPEG", *size) if size else None
        if data.startswith(b"BM") and len(data) >= 26:
            w, h = struct.unpack_from("<ii", data, 18)
            return "BMP", abs(int(w)), abs(int(h))
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack_from("<HH", data, 26)
                return "WebP", int(w) & 0x3FFF, int(h) & 0x3FFF
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return "WebP", w, h
    except struct.error:
        return None
    return None


def decode_image(data: bytes, name: str = "<bytes>") -> ImageArray:
    """BGR pixels of an encoded image; ImageError naming ``name`` if it is not one we accept."""
    if not data:
        raise ImageError(f"image {name} is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"image {name} is {len(data)} bytes, over the limit of {MAX_FILE_BYTES}")
    header = image_size(data)
    if header is None:
        raise ImageError(f"image {name} is corrupt or not a supported format (JPEG, PNG, BMP, WebP)")
    fmt, w, h = header
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"image {name} declares {w}x{h} pixels ({fmt}), over the limit of {MAX_PIXELS // 1_000_000} megapixels"
        )
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"image {name} is {w}x{h} pixels: too small to hold a face (at least {MIN_SIDE} px a side)")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"image {name} could not be decoded: {str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.size == 0:
        raise ImageError(f"image {name} is corrupt ({fmt} header, undecodable data, {len(data)} bytes)")
    if min(img.shape[:2]) < MIN_SIDE:
        raise ImageError(f"image {name} is {img.shape[1]}x{img.shape[0]} pixels: too small to hold a face")
    return np.ascontiguousarray(img)


def read_image(path: Path) -> ImageArray:
    data = read_input_file(path, "image", MAX_FILE_BYTES, ImageError)
    return decode_image(data, str(path))


def check_frame(image: object, name: str = "frame") -> ImageArray:
    """Validate an in-memory frame: a non-empty H×W×3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError(f"{name} is not a uint8 image array")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ImageError(f"{name} has shape {image.shape}, expected H×W×3 with H, W ≥ {MIN_SIDE}")
    return image
