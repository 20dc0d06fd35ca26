"""Imaging conditions for evaluation: transforms applied to an image before detection.

``grey``: what a camera's night (infrared) mode delivers, one channel repeated in three.
``dark``: an under-exposed picture, about 1.3 stops down (pixel values × 0.4).
``blur``: a picture out of focus or moving, Gaussian blur of σ = 1.5 px at the image's size.
``jpeg``: a heavily compressed picture, re-encoded as JPEG at quality 20.

The device calibrates the conditions it can recognise in its own frames (grey: see
``edge.vision.condition``); the others are measured by ``edge eval lfw|identify --condition``,
and a face too dark or too blurred is refused by the quality gate rather than judged.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.errors import InputError
from edge.types import ImageArray

CONDITIONS = ("none", "grey", "dark", "blur", "jpeg")


def apply_condition(image: ImageArray, condition: str) -> ImageArray:
    """``image`` (BGR) as it would look in ``condition``; "none" and "colour" leave it as it is."""
    if condition in ("none", "colour"):
        return image
    if condition == "grey":
        out = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    elif condition == "dark":
        out = (image.astype(np.float32) * 0.4).round()
    elif condition == "blur":
        out = cv2.GaussianBlur(image, (0, 0), 1.5)
    elif condition == "jpeg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 20])
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
        if decoded is None:
            raise InputError("the image could not be re-encoded as JPEG")
        out = decoded
    else:
        raise InputError(f"--condition {condition}: expected one of {', '.join(CONDITIONS)}")
    result: ImageArray = np.asarray(out, np.uint8)
    return result
