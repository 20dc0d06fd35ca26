"""The recognition pipeline: detect → align → quality → embed → match.

``Recognizer`` is what the device service, enrolment, ``edge eval`` and
``edge bench`` all use, so every figure measured is the device's own code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.capture.imageio import check_frame
from edge.device.runtime import Manifest, load_manifest
from edge.device.settings import DetectionSettings, ModelSettings, QualitySettings, Settings, TrackingSettings
from edge.errors import InputError
from edge.recognition.calibration import (
    calibration_for,
    checked_gate,
    conditions_for,
    measured_max_yaw,
    split_threshold,
)
from edge.recognition.match import Matcher
from edge.recognition.track import Tracker
from edge.types import AlignedFace, Box, Face, FloatArray, ImageArray
from edge.vision import align as align_mod
from edge.vision.detect import Detector, DetectorKind, load_detector
from edge.vision.embed import Embedder, load_embedder
from edge.vision.landmarks import MeshRefiner, load_refiner
from edge.vision.quality import assess
from edge.vision.scan import Scanner


@dataclass(frozen=True, slots=True)
class StillResult:
    """What a still image (an enrolment photo, an eval image) gave."""

    aligned: AlignedFace | None
    faces_found: int
    fallback: str  # "" | "other-detector" | "centre-box"


class Recognizer:
    def __init__(self, settings: Settings, manifest: Manifest | None = None) -> None:
        m: ModelSettings = settings.models
        self.settings = settings
        self.manifest = manifest or load_manifest(m.dir)
        self.detector: Detector = load_detector(self.manifest, m.detector, m.threads)
        self._other: Detector | None = None
        self.embedder: Embedder = load_embedder(self.manifest, m.embedder, m.threads, m.flip_average)
        self.embedder_name = m.embedder
        self.embedder_sha256 = self.manifest.spec(m.embedder).sha256
        # sha256 → name of every embedder this manifest knows (a bundle for another one is refused naming both)
        self.embedder_names = {self.manifest.spec(k).sha256: k for k in self.manifest.embedders}
        self._limits: QualitySettings | None = None
        self.refiner: MeshRefiner | None = load_refiner(self.manifest, m.threads) if m.alignment == "mesh5" else None
        self.pipeline_id = pipeline_id(m)
        self._matcher: Matcher | None = None

    def tracker(self, settings: TrackingSettings | None = None) -> Tracker:
        """A tracker for one camera (default: the device's tracking settings), splitting a track when a look is
        someone else's at this embedder's measured score (``split_threshold``)."""
        split = split_threshold(self.manifest, self.embedder_sha256, self.pipeline_id)
        return Tracker(settings or self.settings.tracking, split)

    @property
    def matcher(self) -> Matcher:
        """The matching policy with this embedder's calibration (loaded on first use, so that
        ``models/build.py`` can run the pipeline before the tables exist). Stateless: the
        gallery in force lives in a ``GalleryHolder``."""
        if self._matcher is None:
            calibration = calibration_for(self.manifest, self.embedder_sha256, self.pipeline_id)
            self._limits = checked_gate(self.manifest, self.embedder_sha256, self.pipeline_id, self.settings.quality)
            others = [
                calibration_for(self.manifest, self.embedder_sha256, self.pipeline_id, c)
                for c in conditions_for(self.manifest, self.embedder_sha256, self.pipeline_id)
                if c != "colour"
            ]
            self._matcher = Matcher(calibration, self.settings.match, others)
        return self._matcher

    @property
    def limits(self) -> QualitySettings:
        """The device's quality gate; an unset head-turn limit is the widest the embedder's tables measured."""
        if self._limits is None:
            self._limits = self._filled(self.settings.quality)
        return self._limits

    def _filled(self, limits: QualitySettings) -> QualitySettings:
        if limits.max_yaw is not None:
            return limits
        return limits.model_copy(update={"max_yaw": measured_max_yaw(self.manifest, self.embedder_sha256)})

    def check_gate(self, limits: QualitySettings, section: str) -> QualitySettings:
        """A quality gate this calibration can judge (a camera's own gate, say), its unset head-turn limit
        filled in; else a ModelError naming the key of ``section`` (``quality``, ``cameras.N.quality``)."""
        return checked_gate(self.manifest, self.embedder_sha256, self.pipeline_id, limits, section)

    def other_detector(self) -> Detector:
        if self._other is None:
            kind: DetectorKind = "full" if self.detector.kind == "short" else "short"
            self._other = load_detector(self.manifest, kind, self.settings.models.threads)
        return self._other

    def scanner(self, detection: DetectionSettings | None = None, min_face_px: float | None = None) -> Scanner:
        """A region scanner for one camera (it keeps that camera's motion and schedule), with that
        camera's detection settings and smallest face (default: the device's). Where a large box would
        hide a smaller detection, the face mesh says whether the large one is a face."""
        check = self.is_face if self.refiner is not None else None
        min_face = self.settings.quality.min_face_px if min_face_px is None else min_face_px
        return Scanner(self.detector, detection or self.settings.detection, min_face, check)

    def is_face(self, image: ImageArray, face: Face) -> bool:
        """The face mesh's presence check on one detection (what the quality gate applies later)."""
        assert self.refiner is not None
        _, presence = self.refiner.refine(image, face.keypoints, max(face.box.width, face.box.height))
        return presence >= self.limits.min_presence

    def detect(self, image: ImageArray) -> list[Face]:
        """Every face of a still image, at any size (every window of its layout)."""
        return self.scanner().detect_still(check_frame(image))

    def align(
        self, image: ImageArray, faces: Sequence[Face], limits: QualitySettings | None = None
    ) -> list[AlignedFace]:
        """Each face warped to the template; with ``mesh5`` from refined five points; judged by the
        quality gate ``limits`` (a camera's own; default: the device's)."""
        gate = self.limits if limits is None else self._filled(limits)
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

    def still(self, image: ImageArray, centre_fallback: bool = False) -> StillResult:
        """The largest face of a still image, trying the other detector when allowed.

        With ``centre_fallback`` a picture with no detected face is aligned from
        keypoints of a box centred on the image (used by LFW evaluation, where
        every image is a centred face, and reported as such).
        """
        faces = self.detect(image)
        fallback = ""
        if not faces and self.settings.models.fallback_detector:
            faces = self.other_detector().detect(image)
            fallback = "other-detector" if faces else ""
        if not faces and centre_fallback:
            faces = [centre_face(image)]
            fallback = "centre-box"
        if not faces:
            return StillResult(None, 0, "")
        return StillResult(self.align(image, [main_face(faces, image)])[0], len(faces), fallback)


def main_face(faces: Sequence[Face], image: ImageArray) -> Face:
    """The subject of a portrait: among faces at least half the largest's area,
    the one nearest the image centre."""
    h, w = image.shape[:2]
    largest = max(f.box.width * f.box.height for f in faces)
    big = [f for f in faces if f.box.width * f.box.height >= 0.5 * largest]
    return min(big, key=lambda f: ((f.box.x0 + f.box.x1) / 2 - w / 2) ** 2 + ((f.box.y0 + f.box.y1) / 2 - h / 2) ** 2)


def pipeline_id(m: ModelSettings) -> str:
    """The name under which a calibration table is measured: alignment (+flip)."""
    return m.alignment + ("+flip" if m.flip_average else "")


def centre_face(image: ImageArray) -> Face:
    """A face assumed centred and filling half the image, keypoints from the template."""
    h, w = image.shape[:2]
    side = 0.5 * min(h, w)
    scale = side / align_mod.CROP
    x0, y0 = (w - side) / 2, (h - side) / 2
    kp = np.vstack([align_mod.TEMPLATE_4, [[20.0, 55.0], [92.0, 55.0]]]) * scale + [x0, y0]
    return Face(Box(x0, y0, x0 + side, y0 + side), kp.astype(np.float32), 0.0, "centre")


def require_face(result: StillResult, name: str) -> AlignedFace:
    if result.aligned is None:
        raise InputError(f"{name}: no face found")
    return result.aligned
