"""The build script's graph rewrites that need no TensorFlow: equalisation is exact."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edge.capture.imageio import read_image
from edge.device.runtime import TFLiteModel, default_models_dir
from edge.recognition.pipeline import Recognizer, require_face
from edge.vision.embed import Embedder

from .conftest import FACES

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def quantize():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(MODELS))
    try:
        import quantize as module
    finally:
        sys.path.remove(str(MODELS))
    return module


@pytest.fixture(scope="module")
def faces(recognizer: Recognizer) -> np.ndarray:
    paths = sorted(FACES.glob("*/*.jpg"))[:16]
    return Embedder.preprocess([require_face(recognizer.still(read_image(p)), str(p)).crop for p in paths])


def _run(data: bytes, x: np.ndarray, tmp: Path) -> np.ndarray:
    import hashlib

    tmp.write_bytes(data)
    return TFLiteModel(tmp, hashlib.sha256(data).hexdigest()).run(x)[0]


def test_equalisation_is_an_exact_rewrite_that_evens_channel_ranges(
    quantize, faces: np.ndarray, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fp32 = (default_models_dir() / "mobilefacenet_fp32.tflite").read_bytes()
    equalised, rewritten = quantize.equalize(fp32, faces)
    assert rewritten >= 16  # 16 expand/depthwise/project chains and the residual streams

    before, after = _run(fp32, faces, tmp_path / "a.tflite"), _run(equalised, faces, tmp_path / "b.tflite")
    np.testing.assert_allclose(after, before, rtol=1e-3, atol=1e-3 * float(np.abs(before).max()))

    # Over the same faces, every channel of every int8 expand output now peaks at
    # the same value (the mean peak before); before, the spread was wide.
    expand_outputs = [int(chain[0].outputs[0]) for chain in quantize.find_chains(quantize.graph.read(fp32))]
    assert len(expand_outputs) == 16
    before_peaks = quantize._channel_peaks(fp32, faces, expand_outputs)
    after_peaks = quantize._channel_peaks(equalised, faces, expand_outputs)
    for t in expand_outputs:
        assert before_peaks[t].max() / before_peaks[t].min() > 2
        np.testing.assert_allclose(after_peaks[t], before_peaks[t].mean(), rtol=1e-3)
