"""BlazeFace detection: letterbox, one invoke, vectorised anchor decode, weighted NMS.

Two MediaPipe variants ship: ``short`` (128×128 input, 896 anchors, faces within
about 2 m) and ``full`` (192×192, 2304 anchors, faces up to about 5 m). Anchors
and the letterbox geometry are computed once per frame size, never per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from edge.runtime import Manifest, TFLiteModel, load_model
from edge.types import Box, Face, FloatArray, ImageArray

DetectorKind = Literal["short", "full"]


@dataclass(frozen=True, slots=True)
class AnchorSpec:
    size: int
    strides: tuple[int, ...]
    per_cell: tuple[int, ...]
    score_threshold: float


SPECS: dict[str, AnchorSpec] = {
    # MediaPipe face_detection_short_range: strides 8,16,16,16; 2 anchors per cell
    # on stride 8 and 2 per layer (6 in all) on the three stride-16 layers.
    "short": AnchorSpec(128, (8, 16), (2, 6), 0.5),
    # face_detection_full_range: one layer, stride 4, one anchor per cell.
    "full": AnchorSpec(192, (4,), (1,), 0.6),
}


def make_anchors(spec: AnchorSpec) -> FloatArray:
    """Anchor centres (N, 2) in 0–1 input coordinates, in the model's output order."""
    parts = []
    for stride, count in zip(spec.strides, spec.per_cell, strict=True):
        cells = spec.size // stride
        ys, xs = np.mgrid[0:cells, 0:cells].astype(np.float32)
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        parts.append(np.repeat(centres, count, axis=1).reshape(-1, 2))
    return np.concatenate(parts).astype(np.float32)


def weighted_nms(
    boxes: FloatArray, scores: FloatArray, keypoints: FloatArray, iou_threshold: float
) -> list[tuple[FloatArray, float, FloatArray]]:
    """MediaPipe's weighted NMS: overlapping candidates are blended by score.

    The IoU matrix is computed once for all candidates; the loop runs once per
    output face, not per candidate pair.
    """
    order = np.argsort(-scores)
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    x0, y0, x1, y1 = boxes.T
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    ix0 = np.maximum(x0[:, None], x0[None, :])
    iy0 = np.maximum(y0[:, None], y0[None, :])
    ix1 = np.minimum(x1[:, None], x1[None, :])
    iy1 = np.minimum(y1[:, None], y1[None, :])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)
    alive = np.ones(len(scores), dtype=bool)
    out = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        group = alive & (iou[i] >= iou_threshold)
        group[i] = True
        w = scores[group][:, None]
        box = (boxes[group] * w).sum(0) / w.sum()
        kps = (keypoints[group] * w[:, :, None]).sum(0) / w.sum()
        out.append((box, float(scores[i]), kps))
        alive &= ~group
    return out


class Detector:
    """A BlazeFace model plus its anchors; ``detect`` takes a BGR frame."""

    def __init__(
        self,
        model: TFLiteModel,
        kind: DetectorKind,
        score_threshold: float | None = None,
        iou_threshold: float = 0.3,
        max_faces: int = 16,
    ) -> None:
        self.kind = kind
        self.spec = SPECS[kind]
        self.model = model
        self.anchors = make_anchors(self.spec)
        n_out = model.run(np.zeros(model.input_shape, np.float32))[0].shape[1]
        if n_out != len(self.anchors):
            raise ValueError(f"{model.path}: {n_out} anchors in the model, {len(self.anchors)} expected")
        self.score_threshold = self.spec.score_threshold if score_threshold is None else score_threshold
        self.logit_threshold = float(np.log(self.score_threshold / (1 - self.score_threshold)))
        self.iou_threshold = iou_threshold
        self.max_faces = max_faces
        self._geometry: tuple[tuple[int, int], float, int, int, int, int] | None = None
        self._canvas = np.zeros((self.spec.size, self.spec.size, 3), np.float32)

    def _letterbox(self, shape: tuple[int, int]) -> tuple[float, int, int, int, int]:
        """Scale and padding for a frame size, computed once per size."""
        if self._geometry is None or self._geometry[0] != shape:
            h, w = shape
            scale = self.spec.size / max(h, w)
            nw, nh = round(w * scale), round(h * scale)
            px, py = (self.spec.size - nw) // 2, (self.spec.size - nh) // 2
            self._geometry = (shape, scale, nw, nh, px, py)
            self._canvas[:] = 0.0
        _, scale, nw, nh, px, py = self._geometry
        return scale, nw, nh, px, py

    def preprocess(self, image: ImageArray) -> tuple[npt.NDArray[np.float32], float, int, int]:
        scale, nw, nh, px, py = self._letterbox((int(image.shape[0]), int(image.shape[1])))
        small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        # [-1, 1]; the padding stays 0 (mid-grey), as MediaPipe's letterbox does.
        self._canvas[py : py + nh, px : px + nw] = rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
        return self._canvas[None], scale, px, py

    def detect(self, image: ImageArray) -> list[Face]:
        """Faces in a BGR frame, best score first, boxes and keypoints in frame pixels."""
        batch, scale, px, py = self.preprocess(image)
        regressors, logits = self.model.run(batch)
        raw_scores = logits[0, :, 0]
        keep = np.flatnonzero(raw_scores > self.logit_threshold)
        if keep.size == 0:
            return []
        size = float(self.spec.size)
        reg = regressors[0, keep].reshape(-1, 8, 2) / size
        centres = self.anchors[keep]
        cxcy = reg[:, 0] + centres
        half = reg[:, 1] / 2.0
        boxes = np.concatenate([cxcy - half, cxcy + half], axis=1)
        kps = reg[:, 2:] + centres[:, None, :]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores[keep], -100, 100)))
        faces = []
        to_px = size / scale
        offset = np.array([px, py], np.float32) / size
        for box, score, points in weighted_nms(boxes, scores, kps, self.iou_threshold)[: self.max_faces]:
            b = (box.reshape(2, 2) - offset) * to_px
            k = ((points - offset) * to_px).astype(np.float32)
            k.setflags(write=False)
            faces.append(Face(Box(*(float(v) for v in b.ravel())), k, score, self.kind))
        return faces


def load_detector(manifest: Manifest, kind: DetectorKind, threads: int = 1) -> Detector:
    return Detector(load_model(manifest, f"detector_{kind}", threads=threads), kind)
