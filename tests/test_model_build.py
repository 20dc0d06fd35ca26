"""The model build, checked without TensorFlow: equalisation is exact, and the shipped SFace files give the
upstream ONNX file's embeddings."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.capture.imageio import read_image
from edge.device.runtime import TFLiteModel, default_models_dir, load_manifest
from edge.recognition.pipeline import Recognizer, require_face
from edge.vision.embed import Embedder, load_embedder

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
def crops(recognizer: Recognizer) -> list[np.ndarray]:
    """Aligned BGR crops of the fixture faces (the device's own still path)."""
    paths = sorted(FACES.glob("*/*.jpg"))[:16]
    return [require_face(recognizer.still(read_image(p)), str(p)).crop for p in paths]


@pytest.fixture(scope="module")
def faces(crops: list[np.ndarray]) -> np.ndarray:
    """The crops as MobileFaceNet's input."""
    model = TFLiteModel(MODELS / "mobilefacenet_fp32.tflite", load_manifest().spec("mobilefacenet_fp32").sha256)
    return Embedder(model, load_manifest().embedder("mobilefacenet_fp32")).preprocess(crops)


def _onnx_reference(crops: list[np.ndarray]) -> np.ndarray:
    """SFace's upstream ONNX file in onnxruntime, fed as upstream documents it (RGB 0..255, NCHW, one
    face per run; the weight tensors it declares as inputs but never reads fed zeros)."""
    import onnxruntime as ort

    source = load_manifest().raw["sources"]["sface_onnx"]
    data = (MODELS / source["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == source["sha256"]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    phantom = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name != "data"}
    out = []
    for crop in crops:
        x = crop[..., ::-1].astype(np.float32).transpose(2, 0, 1)[None]
        out.append(session.run(None, {"data": x, **phantom})[0][0])
    vectors = np.array(out)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize(("key", "within"), [("sface_fp16", 1e-3), ("sface_int8", 5e-3)])
def test_sface_tflite_matches_the_upstream_onnx(crops: list[np.ndarray], key: str, within: float) -> None:
    """The shipped SFace files against reference vectors of the upstream file, through the embedder as the
    manifest configures it (channel order and normalisation are the classic traps: BGR fed instead of RGB
    drops the cosine to about 0.9, normalising twice lower still)."""
    reference = _onnx_reference(crops)
    embedder = load_embedder(load_manifest(), key)
    cosine = (embedder.embed(crops) * reference).sum(axis=1)
    assert 1 - cosine.min() <= within, f"{key}: worst cosine to the ONNX reference {cosine.min():.5f}"
    swapped = (embedder.embed([c[..., ::-1].copy() for c in crops]) * reference).sum(axis=1)
    assert 1 - swapped.mean() > 10 * within  # the check can tell the channel order


def _run(data: bytes, x: np.ndarray, tmp: Path) -> np.ndarray:
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
