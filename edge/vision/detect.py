"""BlazeFace detection on one region of a frame: letterbox, one invoke, vectorised
anchor decode, weighted NMS, boxes mapped back to frame pixels.

Two MediaPipe variants ship: ``short`` (128×128 input, 896 anchors) and ``full``
(192×192, 2304 anchors). Measured on this project's CPU (``edge bench``), both
find faces from about 14 px to 100 px *at their input*, and short range costs a
third of full range, so the region scanner (``edge.vision.scan``) feeds short range with
regions of the frame sized so that each face lands in that window. Anchors and each
region's letterbox geometry are computed once, never per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from edge.device.runtime import Manifest, TFLiteModel, load_model
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


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of the frame (pixels) that one detector invoke looks at.

    It may extend past the frame (a crop around a face near the edge): the part
    outside is padding, as in MediaPipe's letterbox. ``keep_edges`` says which of
    its sides are real image borders: a face cut by a side that is not (the edge of
    a tile inside the frame) is dropped, since another overlapping region sees it whole.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    min_face: float = 0.0  # faces (box side, px) this region answers for
    max_face: float = float("inf")
    kind: str = "frame"  # "frame" | "tile" | "track"

    @property
    def side(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @classmethod
    def whole(cls, width: int, height: int) -> Region:
        return cls(0.0, 0.0, float(width), float(height))


@dataclass(frozen=True, slots=True)
class _Placement:
    """Where a region's visible part lands on the model input, computed once per geometry."""

    crop: tuple[int, int, int, int]  # visible part of the region in frame pixels: x0, y0, x1, y1
    dest: tuple[int, int, int, int]  # where it is drawn on the canvas: x, y, w, h
    scale: float  # canvas px per frame px
    origin: tuple[float, float]  # frame coordinates of canvas (0, 0)


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
        self._canvas = np.zeros((self.spec.size, self.spec.size, 3), np.float32)
        self._placements: dict[tuple[int, int, Region], _Placement] = {}

    def _place(self, width: int, height: int, region: Region) -> _Placement:
        """Letterbox ``region`` into the input square; cached, so a fixed layout costs nothing per frame."""
        key = (width, height, region)
        hit = self._placements.get(key) if region.kind != "track" else None
        if hit is not None:
            return hit
        size = self.spec.size
        rw, rh = region.x1 - region.x0, region.y1 - region.y0
        scale = size / max(rw, rh)
        ox, oy = (size - rw * scale) / 2 - region.x0 * scale, (size - rh * scale) / 2 - region.y0 * scale
        cx0, cy0 = max(0, round(region.x0)), max(0, round(region.y0))
        cx1, cy1 = min(width, round(region.x1)), min(height, round(region.y1))
        dx = min(size - 1, max(0, round(cx0 * scale + ox)))
        dy = min(size - 1, max(0, round(cy0 * scale + oy)))
        dw = max(1, min(size - dx, round((cx1 - cx0) * scale)))
        dh = max(1, min(size - dy, round((cy1 - cy0) * scale)))
        placed = _Placement((cx0, cy0, cx1, cy1), (dx, dy, dw, dh), scale, (-ox / scale, -oy / scale))
        if region.kind != "track":  # fixed layouts only; a track's crop moves every frame
            if len(self._placements) > 1024:
                self._placements.clear()
            self._placements[key] = placed
        return placed

    def preprocess(self, image: ImageArray, region: Region) -> tuple[npt.NDArray[np.float32], _Placement]:
        h, w = int(image.shape[0]), int(image.shape[1])
        p = self._place(w, h, region)
        cx0, cy0, cx1, cy1 = p.crop
        dx, dy, dw, dh = p.dest
        self._canvas[:] = 0.0  # [-1, 1] input: 0 is mid-grey, MediaPipe's letterbox padding
        if cx1 > cx0 and cy1 > cy0:
            part = image[cy0:cy1, cx0:cx1]
            # Bilinear, as MediaPipe feeds BlazeFace, unless shrinking more than 2x (it would alias):
            # area averaging there. OpenCV's INTER_AREA at a fractional ratio under 2 costs ~0.2 ms
            # per window at 128 px, bilinear ~0.03 ms.
            fine = p.scale >= 0.5
            small = cv2.resize(part, (dw, dh), interpolation=cv2.INTER_LINEAR if fine else cv2.INTER_AREA)
            rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
            self._canvas[dy : dy + dh, dx : dx + dw] = rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
        return self._canvas[None], p

    def detect(self, image: ImageArray, region: Region | None = None) -> list[Face]:
        """Faces in ``region`` of a BGR frame (default: all of it), best score first,
        boxes and keypoints in frame pixels."""
        h, w = int(image.shape[0]), int(image.shape[1])
        region = region or Region.whole(w, h)
        batch, p = self.preprocess(image, region)
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
        to_px = size / p.scale
        origin = np.array(p.origin, np.float32)
        # Sides of the region inside the frame: a face touching one of them is cut off.
        margin = 0.02 * region.side
        inner = (region.x0 > 0, region.y0 > 0, region.x1 < w, region.y1 < h)
        faces = []
        for box, score, points in weighted_nms(boxes, scores, kps, self.iou_threshold)[: self.max_faces]:
            b = box.reshape(2, 2) * to_px + origin
            x0, y0, x1, y1 = (float(v) for v in b.ravel())
            side = max(x1 - x0, y1 - y0)
            if not region.min_face <= side <= region.max_face:
                continue  # another region of the layout answers for faces of this size
            cut = (
                (inner[0] and x0 < region.x0 + margin)
                or (inner[1] and y0 < region.y0 + margin)
                or (inner[2] and x1 > region.x1 - margin)
                or (inner[3] and y1 > region.y1 - margin)
            )
            if cut:
                continue
            k = (points * to_px + origin).astype(np.float32)
            k.setflags(write=False)
            faces.append(Face(Box(x0, y0, x1, y1), k, score, self.kind, side * p.scale))
        return faces


def load_detector(manifest: Manifest, kind: DetectorKind, threads: int = 1) -> Detector:
    return Detector(load_model(manifest, f"detector_{kind}", threads=threads), kind)
