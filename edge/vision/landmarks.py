"""Landmark refinement with the MediaPipe face mesh, for a true five-point alignment.

BlazeFace's six keypoints are coarse (one mouth-centre point, eye points that
drift with gaze and lids). The face mesh (468 points) run on a 192×192 crop
rotated upright around the detection gives eye centres (mean of each eye's
contour) and the two mouth corners: the five points of the ArcFace template.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.device.runtime import Manifest, TFLiteModel, load_model
from edge.types import FloatArray, ImageArray

SIZE = 192
# Mesh indices: the subject's right eye contour, left eye contour, nose tip, mouth corners.
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
NOSE_TIP = 1
MOUTH_RIGHT, MOUTH_LEFT = 61, 291


class MeshRefiner:
    """Five refined points (right eye, left eye, nose, right and left mouth corner)."""

    def __init__(self, model: TFLiteModel, roi_scale: float = 1.5) -> None:
        self.model = model
        self.roi_scale = roi_scale

    def roi_matrix(self, keypoints: FloatArray, box_side: float) -> np.ndarray:
        """2×3 affine taking the frame to the upright 192×192 mesh input."""
        right_eye, left_eye = keypoints[0].astype(np.float64), keypoints[1].astype(np.float64)
        angle = math.atan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
        centre = keypoints[:4].astype(np.float64).mean(axis=0)
        side = box_side * self.roi_scale
        scale = SIZE / side
        c, s = math.cos(-angle) * scale, math.sin(-angle) * scale
        m = np.array([[c, -s, 0.0], [s, c, 0.0]])
        m[:, 2] = SIZE / 2 - m[:, :2] @ centre
        return m

    def refine(self, image: ImageArray, keypoints: FloatArray, box_side: float) -> tuple[FloatArray, float]:
        """(5×2 points in frame pixels, face-presence score 0–1)."""
        m = self.roi_matrix(keypoints, box_side)
        crop = cv2.warpAffine(image, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        x = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32)[None] * (1.0 / 255.0)
        mesh, presence = self.model.run(x)
        pts = mesh.reshape(-1, 3)[:, :2]
        five = np.stack(
            [
                pts[RIGHT_EYE].mean(axis=0),
                pts[LEFT_EYE].mean(axis=0),
                pts[NOSE_TIP],
                pts[MOUTH_RIGHT],
                pts[MOUTH_LEFT],
            ]
        )
        inv = cv2.invertAffineTransform(m)
        frame_pts = five @ inv[:, :2].T + inv[:, 2]
        score = float(1.0 / (1.0 + math.exp(-float(np.clip(presence.ravel()[0], -50, 50)))))
        return frame_pts.astype(np.float32), score


def load_refiner(manifest: Manifest, threads: int = 1) -> MeshRefiner:
    return MeshRefiner(load_model(manifest, "landmarks", threads=threads))
