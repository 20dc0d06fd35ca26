"""Real models on real faces: embeddings, thresholds, int8 agreement, gallery search."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from edge.capture.imageio import read_image
from edge.device.settings import Settings
from edge.recognition.match import Gallery
from edge.recognition.pipeline import Recognizer, require_face

from .conftest import FACES


@pytest.fixture(scope="module")
def embedded(recognizer: Recognizer) -> dict[Path, np.ndarray]:
    paths = sorted(FACES.glob("*/*.jpg"))
    aligned = [require_face(recognizer.still(read_image(p)), str(p)) for p in paths]
    emb = recognizer.embed(aligned)
    return dict(zip(paths, emb, strict=True))


def test_embeddings_are_unit_vectors_of_the_manifests_dimension_and_batch_independent(
    recognizer: Recognizer, embedded: dict[Path, np.ndarray]
) -> None:
    vecs = np.stack(list(embedded.values()))
    assert vecs.shape[1] == recognizer.manifest.embedder(recognizer.embedder_name).dim == 128  # SFace
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    p = next(iter(embedded))
    single = recognizer.embed([require_face(recognizer.still(read_image(p)), str(p))])[0]
    np.testing.assert_allclose(single, embedded[p], atol=1e-4)


def test_same_person_above_and_different_people_below_default_threshold(
    recognizer: Recognizer, embedded: dict[Path, np.ndarray]
) -> None:
    # The per-comparison threshold at the default rate (no open-set division).
    threshold = recognizer.matcher.calibration.largest.table.threshold_for(Settings().match.max_false_match_rate)
    same, diff = [], []
    for (pa, a), (pb, b) in itertools.combinations(embedded.items(), 2):
        (same if pa.parent == pb.parent else diff).append(float(a @ b))
    assert min(diff) < threshold and max(diff) < threshold, f"impostor pair reached {max(diff):.3f} ≥ {threshold:.3f}"
    # LFW same-person pairs include hard ones; nearly all must pass.
    assert np.mean(np.array(same) >= threshold) >= 0.9, sorted(same)[:5]


@pytest.mark.parametrize(
    ("float_key", "int8_key", "least"),
    [("mobilefacenet_fp32", "mobilefacenet_int8", 0.98), ("sface_fp16", "sface_int8", 0.995)],
)
def test_int8_and_float_embeddings_agree(float_key: str, int8_key: str, least: float) -> None:
    fp32 = Recognizer(Settings.model_validate({"models": {"embedder": float_key}}))
    int8 = Recognizer(Settings.model_validate({"models": {"embedder": int8_key}}))
    paths = sorted(FACES.glob("*/*.jpg"))
    crops = [require_face(fp32.still(read_image(p)), str(p)) for p in paths]
    cos = (fp32.embed(crops) * int8.embed(crops)).sum(axis=1)
    assert cos.min() >= least, f"worst cosine {cos.min():.4f}"


def test_gallery_search_finds_the_enrolled_identity_with_margin(
    recognizer: Recognizer, embedded: dict[Path, np.ndarray]
) -> None:
    by_person: dict[str, list[np.ndarray]] = {}
    for p, v in embedded.items():
        by_person.setdefault(p.parent.name, []).append(v)
    enrolled = {n: v for n, v in by_person.items() if len(v) >= 3}
    gallery = Gallery.build([(n, n.replace("_", " "), np.stack(v[:-1])) for n, v in enrolled.items()], version=3)
    snap = recognizer.matcher.snapshot(gallery)
    probes = [v[-1] for v in enrolled.values()]
    for name, m in zip(enrolled, snap.match(np.stack(probes)), strict=True):
        assert m.identity_id == name and m.accepted and m.gallery_version == 3
        assert m.margin > 0.1 and m.score >= m.threshold
        assert 0 < m.est_false_match_rate < 1e-3
    strangers = [v[0] for n, v in by_person.items() if n not in enrolled]
    assert not any(m.accepted for m in snap.match(np.stack(strangers)))


def test_a_night_cameras_grey_frames_are_recognised_as_grey_and_judged_with_the_grey_tables(
    recognizer: Recognizer,
) -> None:
    """The device reads the condition from each face's own pixels: a camera that switches to its
    infrared mode delivers grey frames, whose faces are judged with the tables of grey probes."""
    import cv2

    from edge.demo.scenes import gradient_background, paste
    from edge.device.health import Stats
    from edge.recognition.match import GalleryHolder
    from edge.recognition.process import FrameProcessor
    from edge.recognition.track import Confirmation, Tracker
    from edge.types import Frame

    enrol = [p for p in sorted((FACES / "Colin_Powell").glob("*.jpg")) if p.name != "Colin_Powell_0074.jpg"]
    aligned = [recognizer.still(read_image(p)).aligned for p in enrol]
    gallery = Gallery.build(
        [("colin", "Colin", recognizer.embed([a for a in aligned if a is not None and a.quality.ok]))]
    )
    holder = GalleryHolder(recognizer.matcher, gallery)
    assert "grey" in recognizer.matcher.conditions
    wall = gradient_background(640, 480, np.random.default_rng(5))
    scene = wall.copy()
    paste(scene, read_image(FACES / "Colin_Powell/Colin_Powell_0074.jpg"), 320.0, 240.0, 110.0)
    night = cv2.cvtColor(cv2.cvtColor(scene, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    seen: dict[str, list[Confirmation]] = {"day": [], "night": []}
    for when, image in (("day", scene), ("night", night)):
        proc = FrameProcessor(
            recognizer,
            holder,
            Tracker(recognizer.settings.tracking),
            Stats(),
            lambda c, f, when=when: seen[when].append(c),
        )
        for i in range(8):
            proc(Frame(image, i, i / 30))
    (day,), (dark,) = seen["day"], seen["night"]
    assert day.match.identity_id == dark.match.identity_id == "colin"
    assert day.match.condition == "colour" and dark.match.condition == "grey"
    grey_band = next(bt for bt in holder.current.by_condition["grey"] if bt.band.label == dark.match.band)
    assert dark.match.threshold == pytest.approx(float(grey_band.single[0]))  # the grey tables' own threshold
    assert dark.match.threshold != pytest.approx(day.match.threshold)  # another table judged it
