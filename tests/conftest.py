from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.capture.imageio import read_image
from edge.device.runtime import default_models_dir
from edge.device.settings import Settings
from edge.recognition.pipeline import Recognizer
from edge.types import ImageArray

FIXTURES = Path(__file__).parent / "fixtures"
FACES = FIXTURES / "faces"


def face_images(name: str) -> list[Path]:
    return sorted((FACES / name).glob("*.jpg"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return FACES


@pytest.fixture(scope="session")
def recognizer() -> Recognizer:
    return Recognizer(Settings())


@pytest.fixture(scope="session")
def load() -> callable[[Path], ImageArray]:  # type: ignore[name-defined]
    return read_image


@pytest.fixture()
def models_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped models, safe to damage."""
    dst = tmp_path / "models"
    shutil.copytree(default_models_dir(), dst, ignore=shutil.ignore_patterns("*.py", "*.onnx", "__pycache__", ".work"))
    return dst
