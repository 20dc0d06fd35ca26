"""Reading still images with a clear error for every way a file can be bad."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageError
from edge.types import ImageArray

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def decode_image(data: bytes, name: str = "<bytes>") -> ImageArray:
    """BGR pixels of an encoded image; ImageError naming ``name`` if it is not one."""
    if not data:
        raise ImageError(f"image {name} is empty (0 bytes)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageError(f"image {name} is corrupt or not a supported format ({len(data)} bytes)")
    return np.ascontiguousarray(img)


def read_image(path: Path) -> ImageArray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    return decode_image(data, str(path))


def check_frame(image: object, name: str = "frame") -> ImageArray:
    """Validate an in-memory frame: a non-empty H×W×3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError(f"{name} is not a uint8 image array")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 8 or image.shape[1] < 8:
        raise ImageError(f"{name} has shape {image.shape}, expected H×W×3 with H, W ≥ 8")
    return image
