"""The recognition pipeline: the vision stages' faces (``edge.vision.pipeline``) → match → track.

``Recognizer`` is what the device service, enrolment, ``edge identify`` and the lab all use, so every
figure measured is the device's own code path: the vision stages of the settings' models (one
``FacePipeline``), judged with the embedder's own calibration (its quality gate, its thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence

from edge.capture.imageio import check_frame
from edge.device.runtime import Manifest, load_manifest
from edge.device.settings import DetectionSettings, QualitySettings, Settings, TrackingSettings
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
from edge.types import AlignedFace, Face, FloatArray, ImageArray
from edge.vision.detect import Detector
from edge.vision.embed import Embedder
from edge.vision.landmarks import MeshRefiner
from edge.vision.pipeline import FacePipeline, StillResult, main_face, pipeline_id
from edge.vision.scan import Scanner

__all__ = ["Recognizer", "StillResult", "main_face", "pipeline_id", "require_face"]


class Recognizer:
    def __init__(self, settings: Settings, manifest: Manifest | None = None) -> None:
        self.settings = settings
        self.manifest = manifest or load_manifest(settings.models.dir)
        self.faces = FacePipeline(settings.models, self.manifest, settings.detection)
        self.embedder_name = settings.models.embedder
        self.embedder_sha256 = self.manifest.spec(self.embedder_name).sha256
        # sha256 → name of every embedder this manifest knows (a bundle for another one is refused naming both)
        self.embedder_names = {self.manifest.spec(k).sha256: k for k in self.manifest.embedders}
        self._limits: QualitySettings | None = None
        self.pipeline_id = self.faces.pipeline_id
        self._matcher: Matcher | None = None

    @property
    def detector(self) -> Detector:
        return self.faces.detector

    @property
    def embedder(self) -> Embedder:
        return self.faces.embedder

    @property
    def refiner(self) -> MeshRefiner | None:
        return self.faces.refiner

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
        return self.faces.other_detector()

    def scanner(self, detection: DetectionSettings | None = None, min_face_px: float | None = None) -> Scanner:
        """A region scanner for one camera, with that camera's detection settings and smallest face
        (default: the device's)."""
        min_face = self.settings.quality.min_face_px if min_face_px is None else min_face_px
        return self.faces.scanner(detection, min_face, self.limits.min_presence)

    def is_face(self, image: ImageArray, face: Face) -> bool:
        """The face mesh's presence check on one detection (what the quality gate applies later)."""
        return self.faces.is_face(image, face, self.limits.min_presence)

    def detect(self, image: ImageArray) -> list[Face]:
        """Every face of a still image, at any size (every window of its layout)."""
        return self.faces.detect(check_frame(image), self.settings.quality.min_face_px, self.limits.min_presence)

    def align(
        self, image: ImageArray, faces: Sequence[Face], limits: QualitySettings | None = None
    ) -> list[AlignedFace]:
        """Each face warped to the template and judged by the quality gate ``limits`` (a camera's own;
        default: the device's, its head-turn limit the one the tables measured)."""
        return self.faces.align(image, faces, self.limits if limits is None else self._filled(limits))

    def embed(self, aligned: Sequence[AlignedFace]) -> FloatArray:
        return self.faces.embed(aligned)

    def still(self, image: ImageArray) -> StillResult:
        """The main face of a still image, aligned and judged by the device's gate."""
        return self.faces.still(check_frame(image), self.limits)


def require_face(result: StillResult, name: str) -> AlignedFace:
    if result.aligned is None:
        raise InputError(f"{name}: no face found")
    return result.aligned
