"""Alignment: keypoints → similarity transform → 112×112 crop in the ArcFace template.

BlazeFace gives eyes, nose tip and mouth centre; they are mapped onto the standard
five-point ArcFace template with the mouth corners merged into their midpoint.
The least-squares similarity (Umeyama) uses those four correspondences.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.types import Face, ImageArray

CROP = 112

# ArcFace 112×112 template: right eye, left eye, nose tip, right and left mouth corner.
ARCFACE_5 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# Eyes, nose, mouth centre: the four points BlazeFace gives (keypoints 0–3).
TEMPLATE_4 = np.vstack([ARCFACE_5[:3], ARCFACE_5[3:].mean(axis=0, keepdims=True)])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 least-squares similarity transform (rotation, uniform scale, shift) src → dst."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / s.var(0).sum()
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - m[:, :2] @ src_mean
    return m


def transform_for(face: Face, template: np.ndarray = TEMPLATE_4) -> np.ndarray:
    return similarity(face.keypoints[:4].astype(np.float64), template)


def warp(image: ImageArray, matrix: np.ndarray, size: int = CROP) -> ImageArray:
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(crop)


def align(image: ImageArray, face: Face) -> ImageArray:
    """The 112×112 BGR crop of ``face`` in the embedder's template."""
    return warp(image, transform_for(face))
