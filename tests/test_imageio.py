from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.capture.imageio import check_frame, read_image
from edge.errors import ImageError
from edge.recognition.pipeline import Recognizer

from .conftest import FACES


def test_corrupt_image_is_a_clear_error(tmp_path: Path) -> None:
    good = sorted(FACES.glob("*/*.jpg"))[0].read_bytes()
    bad = tmp_path / "half.jpg"
    bad.write_bytes(good[:40])
    with pytest.raises(ImageError, match=r"half\.jpg is corrupt"):
        read_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png is empty"):
        read_image(empty)
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")


def test_bad_frames_are_refused_before_the_model(recognizer: Recognizer) -> None:
    with pytest.raises(ImageError, match="shape"):
        recognizer.detect(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ImageError, match="uint8"):
        recognizer.detect(np.zeros((10, 10, 3), np.float32))
    assert check_frame(np.zeros((10, 10, 3), np.uint8)).shape == (10, 10, 3)
