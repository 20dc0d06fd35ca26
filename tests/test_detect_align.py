from __future__ import annotations

import numpy as np
import pytest

from edge.capture.imageio import read_image
from edge.recognition.pipeline import Recognizer, main_face
from edge.vision import align
from edge.vision.detect import SPECS, make_anchors, weighted_nms

from .conftest import FACES


def test_anchor_counts_match_the_models() -> None:
    assert make_anchors(SPECS["short"]).shape == (896, 2)
    assert make_anchors(SPECS["full"]).shape == (2304, 2)


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    out = weighted_nms(boxes, scores, kps, 0.3)
    assert len(out) == 2
    merged, score, _ = out[0]
    assert score == pytest.approx(0.9)
    assert 0 < merged[0] < 1  # blended by score between the two overlapping boxes


@pytest.mark.parametrize("path", sorted(FACES.glob("*/*.jpg"))[:8], ids=lambda p: p.stem)
def test_faces_found_with_plausible_box_and_keypoints(recognizer: Recognizer, path: object) -> None:
    image = read_image(path)  # type: ignore[arg-type]
    faces = recognizer.detect(image)
    assert faces, "no face in an LFW portrait"
    f = main_face(faces, image)
    # LFW deep-funneled portraits: 250×250, face centred, roughly 90–140 px.
    assert 60 < f.box.width < 170 and 60 < f.box.height < 170
    cx, cy = (f.box.x0 + f.box.x1) / 2, (f.box.y0 + f.box.y1) / 2
    assert abs(cx - 125) < 30 and abs(cy - 130) < 35
    right_eye, left_eye, nose, mouth = f.keypoints[:4]
    assert right_eye[0] < nose[0] < left_eye[0]  # the subject's right eye is on the image's left
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
    assert f.score > 0.5


def test_blank_frame_has_no_face(recognizer: Recognizer) -> None:
    assert recognizer.detect(np.full((480, 640, 3), 127, np.uint8)) == []


def test_similarity_recovers_a_known_transform() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = align.ARCFACE_5
    dst = src @ rot.T + shift
    m = align.similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_aligned_crop_puts_the_five_points_on_the_template(recognizer: Recognizer) -> None:
    image = read_image(sorted(FACES.glob("Colin_Powell/*.jpg"))[0])
    face = recognizer.detect(image)[0]
    aligned = recognizer.align(image, [face])[0]
    assert aligned.crop.shape == (112, 112, 3) and aligned.crop.dtype == np.uint8
    assert aligned.quality.ok, aligned.quality.reason
    assert recognizer.refiner is not None
    points, presence = recognizer.refiner.refine(image, face.keypoints, max(face.box.width, face.box.height))
    assert presence > 0.9
    m = align.similarity(points.astype(np.float64), align.ARCFACE_5)
    placed = points @ m[:, :2].T + m[:, 2]
    # A frontal face's eyes land within 3 px of the template's, nose and mouth corners within 6
    # (a least-squares fit: a real face is not the template); a failed alignment is tens of px off.
    error = np.abs(placed - align.ARCFACE_5)
    assert error[:2].max() < 3.0 and error.max() < 6.0
    # And the pipeline's crop is exactly that warp (the refined points, not the detector's).
    np.testing.assert_array_equal(aligned.crop, align.warp(image, m))
    assert not np.array_equal(aligned.crop, align.warp(image, align.transform_for(face)))
