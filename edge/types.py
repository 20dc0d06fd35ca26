"""Frozen dataclasses that cross stage boundaries.

Stages exchange these, never positional tuples or loose dicts; numpy arrays stay
inside a stage or travel as read-only fields of these records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box in pixel coordinates of the frame it was found in."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def normalised(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box as fractions 0–1 of a ``width`` × ``height`` frame, clipped."""
        return (
            min(max(self.x0 / width, 0.0), 1.0),
            min(max(self.y0 / height, 0.0), 1.0),
            min(max(self.x1 / width, 0.0), 1.0),
            min(max(self.y1 / height, 0.0), 1.0),
        )


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame: BGR pixels, a sequence number and a monotonic timestamp."""

    image: ImageArray
    seq: int
    ts: float
    # A photo of its own, unrelated to the frame before (an image-folder source): no track carries over
    # into it, and it is judged as ``edge identify`` judges a photo (every window scanned, one look).
    still: bool = False

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class Face:
    """A detected face: box, six BlazeFace keypoints (x, y in frame pixels), score.

    Keypoint order: right eye, left eye, nose tip, mouth centre, right ear, left ear
    (the subject's right, i.e. the left side of the image).
    """

    box: Box
    keypoints: FloatArray
    score: float
    detector: str = "short"
    input_px: float = 0.0  # box side at the detector's input: how well the region resolved it


@dataclass(frozen=True, slots=True)
class Follow:
    """A live track the scanner re-detects in a crop of its own. ``unchanged_face`` is the face it was
    last found as, offered when the track needs no evidence this frame: if nothing in that face
    changed for the ``unchanged_frames`` since it was found, plus this one, it is still there and no
    detector runs for it. A track ``lost`` frames ago whose crop has not changed since is not
    looked for again: the detector would see what it saw when it lost the face. A track whose
    looks the quality gate has not passed (``face`` False: a wall boxed whole, a head turned) is
    still re-detected, but what it finds explains no motion: a face it may hide is looked for by
    the motion windows."""

    box: Box
    unchanged_face: Face | None = None
    unchanged_frames: int = 0
    lost: int = 0
    face: bool = True


@dataclass(frozen=True, slots=True)
class Quality:
    """Outcome of the quality gate for one face: ``reason`` is empty when accepted."""

    ok: bool
    reason: str
    face_px: float
    sharpness: float
    yaw: float
    roll: float
    brightness: float
    presence: float = 1.0  # face mesh face-presence score (1 when the mesh did not run)
    condition: str = "colour"  # the imaging condition read from the crop: "colour" or "grey" (edge.vision.condition)

    @property
    def score(self) -> float:
        """A 0–1 summary for event payloads: 1 is a large, sharp, frontal face."""
        size = min(self.face_px / 112.0, 1.0)
        sharp = min(self.sharpness / 200.0, 1.0)
        pose = max(0.0, 1.0 - (abs(self.yaw) + abs(self.roll) / 45.0) / 2.0)
        return round(float(size * 0.4 + sharp * 0.3 + pose * 0.3), 3)


@dataclass(frozen=True, slots=True)
class AlignedFace:
    """A face warped to the 112×112 embedder template, with its quality verdict."""

    face: Face
    crop: ImageArray
    quality: Quality


@dataclass(frozen=True, slots=True)
class Match:
    """Best gallery identity for one embedding, with the evidence for the decision.

    ``accepted`` is ``score >= threshold`` (and the margin over the second identity
    at least ``min_margin``); ``threshold`` and ``est_false_match_rate`` (the rate at
    which a stranger's face reaches ``score`` against this gallery) are those of
    the face's size ``band``, the evidence (``looks`` fused, the identity's ``templates``)
    and the imaging ``condition``; ``gallery_version`` is the snapshot that judged it.
    """

    identity_id: str | None
    label: str | None
    score: float
    margin: float
    threshold: float
    est_false_match_rate: float
    accepted: bool
    gallery_version: int = 0
    band: str = ""
    looks: int = 1  # 1: one look; more: the mean of that many looks of a track (fused)
    templates: int = 1  # photos of the matched identity (its template is their mean)
    condition: str = "colour"  # the imaging condition whose tables judged it
