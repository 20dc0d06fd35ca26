"""Embedder: aligned face crops → L2-normalised vectors, as the manifest says to feed the model.

The manifest entry of each embedder (``role: embedder``) gives its input side, channel order,
the normalisation done before the graph (none where the graph normalises itself, as SFace's
does) and the output dimension; nothing about a particular model is written here. Several faces
go through one invoke. With ``flip_average`` each face is also embedded mirrored and the two
vectors are averaged (more accurate, twice the cost).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge.device.runtime import EmbedderSpec, Manifest, TFLiteModel, load_model
from edge.errors import ModelError
from edge.types import FloatArray, ImageArray


def l2_normalise(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: FloatArray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class Embedder:
    def __init__(self, model: TFLiteModel, spec: EmbedderSpec, flip_average: bool = False, max_batch: int = 8) -> None:
        self.model = model
        self.spec = spec
        self.flip_average = flip_average
        self.max_batch = max_batch
        self.dim = spec.dim
        given = int(model.run(np.zeros((1, spec.size, spec.size, 3), np.float32))[0].shape[-1])
        if given != spec.dim:
            raise ModelError(f"embedder '{spec.key}' gives {given}-d vectors, its manifest entry says {spec.dim}")

    @property
    def name(self) -> str:
        return self.spec.key

    def preprocess(self, crops: Sequence[ImageArray]) -> FloatArray:
        """BGR crops (the aligner's) → the model's input: its side, channel order and normalisation."""
        size = self.spec.size
        batch = np.stack(
            [c if c.shape[0] == size else cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops]
        )
        if self.spec.channels == "RGB":
            batch = batch[..., ::-1]
        out: FloatArray = batch.astype(np.float32)
        if self.spec.mean != 0.0 or self.spec.scale != 1.0:
            out = (out - np.float32(self.spec.mean)) * np.float32(self.spec.scale)
        return out

    def embed(self, crops: Sequence[ImageArray]) -> FloatArray:
        """(len(crops), dim) unit vectors; an empty input gives an empty (0, dim) array."""
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        plain, mirrored = self.embed_both(crops, mirror=self.flip_average)
        if mirrored is None:
            return plain
        return l2_normalise(plain + mirrored)

    def embed_both(self, crops: Sequence[ImageArray], mirror: bool = True) -> tuple[FloatArray, FloatArray | None]:
        """Unit vectors of the crops and (with ``mirror``) of their mirror images, from one pass."""
        batch = self.preprocess(crops)
        if mirror:
            batch = np.concatenate([batch, batch[:, :, ::-1]])
        parts = [self.model.run(batch[i : i + self.max_batch])[0] for i in range(0, len(batch), self.max_batch)]
        out = l2_normalise(np.concatenate(parts).astype(np.float32))
        n = len(crops)
        return (out[:n], out[n:]) if mirror else (out, None)


def load_embedder(manifest: Manifest, key: str, threads: int = 1, flip_average: bool = False) -> Embedder:
    spec = manifest.embedder(key)
    return Embedder(load_model(manifest, key, threads=threads), spec, flip_average=flip_average)
