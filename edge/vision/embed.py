"""Embedder: batched MobileFaceNet → L2-normalised 192-d vectors.

Several faces go through one invoke. With ``flip_average`` each face is also
embedded mirrored and the two vectors are averaged (more accurate, twice the cost).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.device.runtime import Manifest, TFLiteModel, load_model
from edge.types import FloatArray, ImageArray


def l2_normalise(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: FloatArray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class Embedder:
    def __init__(self, model: TFLiteModel, flip_average: bool = False, max_batch: int = 8) -> None:
        self.model = model
        self.flip_average = flip_average
        self.max_batch = max_batch
        self.dim = int(model.run(np.zeros((1, 112, 112, 3), np.float32))[0].shape[-1])

    @staticmethod
    def preprocess(crops: Sequence[ImageArray]) -> FloatArray:
        batch = np.stack(crops)[..., ::-1].astype(np.float32)  # BGR → RGB
        return (batch - 127.5) * (1.0 / 128.0)

    def embed(self, crops: Sequence[ImageArray]) -> FloatArray:
        """(len(crops), dim) unit vectors; an empty input gives an empty (0, dim) array."""
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        batch = self.preprocess(crops)
        if self.flip_average:
            batch = np.concatenate([batch, batch[:, :, ::-1]])
        parts = [self.model.run(batch[i : i + self.max_batch])[0] for i in range(0, len(batch), self.max_batch)]
        out = np.concatenate(parts).astype(np.float32)
        if self.flip_average:
            n = len(crops)
            out = l2_normalise(out[:n]) + l2_normalise(out[n:])
        return l2_normalise(out)


def load_embedder(manifest: Manifest, key: str, threads: int = 1, flip_average: bool = False) -> Embedder:
    return Embedder(load_model(manifest, key, threads=threads), flip_average=flip_average)
