"""The vision stages of one set of models, built once from the manifest and the settings: the face
detector (and the other one, for still photos), the face mesh, the aligner, the quality gate and the
embedder. What they make is faces: detected, aligned, judged and embedded. What a face is then
matched against, and what counts as a confirmation, is the recognition layer's (``Recognizer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.device.runtime import Manifest
from edge.device.settings import DetectionSettings, ModelSettings, QualitySettings
from edge.types import AlignedFace, Face, FloatArray, ImageArray
from edge.vision import align as align_mod
from edge.vision.detect import Detector, DetectorKind, load_detector
from edge.vision.embed import Embedder, load_embedder
from edge.vision.landmarks import MeshRefiner, load_refiner
from edge.vision.quality import assess
from edge.vision.scan import Scanner


@dataclass(frozen=True, slots=True)
class StillResult:
    """What a still image (an enrolment photo, an identify photo) gave."""

    aligned: AlignedFace | None
    faces_found: int
    fallback: str  # "" | "other-detector"


def pipeline_id(m: ModelSettings) -> str:
    """The name under which a calibration table is measured: alignment (+flip)."""
    return m.alignment + ("+flip" if m.flip_average else "")


def main_face(faces: Sequence[Face], image: ImageArray) -> Face:
    """The subject of a portrait: among faces at least half the largest's area,
    the one nearest the image centre."""
    h, w = image.shape[:2]
    largest = max(f.box.width * f.box.height for f in faces)
    big = [f for f in faces if f.box.width * f.box.height >= 0.5 * largest]
    return min(big, key=lambda f: ((f.box.x0 + f.box.x1) / 2 - w / 2) ** 2 + ((f.box.y0 + f.box.y1) / 2 - h / 2) ** 2)


class FacePipeline:
    """The one factory of the vision stages: every camera, enrolment, identify and every measurement use it."""

    def __init__(self, models: ModelSettings, manifest: Manifest, detection: DetectionSettings) -> None:
        self.models = models
        self.manifest = manifest
        self.detection = detection
        self.detector: Detector = load_detector(manifest, models.detector, models.threads)
        self._other: Detector | None = None
        self.embedder: Embedder = load_embedder(manifest, models.embedder, models.threads, models.flip_average)
        self.refiner: MeshRefiner | None = (
            load_refiner(manifest, models.threads) if models.alignment == "mesh5" else None
        )
        self.pipeline_id = pipeline_id(models)

    def other_detector(self) -> Detector:
        if self._other is None:
            kind: DetectorKind = "full" if self.detector.kind == "short" else "short"
            self._other = load_detector(self.manifest, kind, self.models.threads)
        return self._other

    def scanner(self, detection: DetectionSettings | None, min_face_px: float, min_presence: float) -> Scanner:
        """A region scanner for one camera (it keeps that camera's motion and schedule). Where a large box
        would hide a smaller detection, the face mesh says whether the large one is a face."""
        check = None
        if self.refiner is not None:

            def check(image: ImageArray, face: Face) -> bool:
                return self.is_face(image, face, min_presence)

        return Scanner(self.detector, detection or self.detection, min_face_px, check)

    def is_face(self, image: ImageArray, face: Face, min_presence: float) -> bool:
        """The face mesh's presence check on one detection (what the quality gate applies later)."""
        assert self.refiner is not None
        _, presence = self.refiner.refine(image, face.keypoints, max(face.box.width, face.box.height))
        return presence >= min_presence

    def detect(self, image: ImageArray, min_face_px: float, min_presence: float) -> list[Face]:
        """Every face of a still image, at any size (every window of its layout)."""
        return self.scanner(None, min_face_px, min_presence).detect_still(image)

    def align(self, image: ImageArray, faces: Sequence[Face], gate: QualitySettings) -> list[AlignedFace]:
        """Each face warped to the template; with ``mesh5`` from refined five points; judged by ``gate``."""
        out = []
        for face in faces:
            points, presence = None, None
            if self.refiner is not None and face.detector != "centre":
                side = max(face.box.width, face.box.height)
                points, presence = self.refiner.refine(image, face.keypoints, side)
                matrix = align_mod.similarity(points.astype(np.float64), align_mod.ARCFACE_5)
            else:
                matrix = align_mod.transform_for(face)
            crop = align_mod.warp(image, matrix)
            out.append(AlignedFace(face, crop, assess(face, crop, gate, points, presence)))
        return out

    def embed(self, aligned: Sequence[AlignedFace]) -> FloatArray:
        return self.embedder.embed([a.crop for a in aligned])

    def still(self, image: ImageArray, gate: QualitySettings) -> StillResult:
        """The main face of a still image (``main_face``), trying the other detector when the settings
        allow it."""
        faces = self.detect(image, gate.min_face_px, gate.min_presence)
        fallback = ""
        if not faces and self.models.fallback_detector:
            faces = self.other_detector().detect(image)
            fallback = "other-detector" if faces else ""
        if not faces:
            return StillResult(None, 0, "")
        return StillResult(self.align(image, [main_face(faces, image)], gate)[0], len(faces), fallback)
