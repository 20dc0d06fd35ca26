from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.capture.imageio import read_image
from edge.device.settings import QualitySettings
from edge.recognition.pipeline import Recognizer
from edge.types import Box, Face
from edge.vision.quality import assess

from .conftest import FACES


def _face_and_crop(recognizer: Recognizer) -> tuple[Face, np.ndarray]:
    image = read_image(FACES / "Laura_Bush" / "Laura_Bush_0016.jpg")
    aligned = recognizer.align(image, recognizer.detect(image)[:1])[0]
    return aligned.face, aligned.crop


def test_good_face_passes(recognizer: Recognizer) -> None:
    face, crop = _face_and_crop(recognizer)
    q = assess(face, crop, recognizer.limits)
    assert q.ok and q.reason == ""
    assert 0 < q.score <= 1


def test_each_failure_names_its_reason(recognizer: Recognizer) -> None:
    face, crop = _face_and_crop(recognizer)
    small = Face(Box(0, 0, 20, 20), face.keypoints, face.score)
    assert assess(small, crop, QualitySettings(max_yaw=0.8)).reason.startswith("face too small")
    blurred = cv2.GaussianBlur(crop, (0, 0), 6)
    assert assess(face, blurred, QualitySettings(max_yaw=0.8)).reason.startswith("blurred")
    dark = (crop * 0.1).astype(np.uint8)
    assert assess(face, dark, QualitySettings(min_sharpness=0, max_yaw=0.8)).reason.startswith("too dark")
    turned = face.keypoints.copy()
    turned[2] = turned[0]  # nose over the right eye: yaw -1
    assert assess(Face(face.box, turned, face.score), crop, QualitySettings(max_yaw=0.8)).reason.startswith(
        "head turned"
    )
    tilted = face.keypoints.copy()
    tilted[1] = tilted[0] + np.array([0.0, 40.0])  # eye line vertical
    assert "tilted" in assess(Face(face.box, tilted, face.score), crop, QualitySettings(max_yaw=1.0)).reason


def test_the_head_turn_limit_is_pinned_at_its_boundary(recognizer: Recognizer) -> None:
    face, crop = _face_and_crop(recognizer)
    turned = face.keypoints.copy()
    turned[2] = turned[0]  # nose over the right eye: yaw exactly -1
    at = Face(face.box, turned, face.score)
    assert assess(at, crop, QualitySettings(max_yaw=1.0)).ok
    assert assess(at, crop, QualitySettings(max_yaw=0.999)).reason.startswith("head turned (yaw -1.00")


def test_a_gate_without_its_head_turn_limit_is_never_applied(recognizer: Recognizer) -> None:
    face, crop = _face_and_crop(recognizer)
    with pytest.raises(ValueError, match="head-turn limit"):
        assess(face, crop, QualitySettings())
