"""Enrolment from clips, and the report on how well each person will be recognised."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.imageio import read_image
from edge.cli import main
from edge.demo.scenes import gradient_background, paste
from edge.gallery.clip import MIN_FRAMES_APART, enrol_clip
from edge.recognition.pipeline import Recognizer

from .conftest import FACES

COLIN = sorted((FACES / "Colin_Powell").glob("*.jpg"))


def write_clip(path: Path, scenes: list[list[tuple[Path, float, float]]], face: float = 110.0) -> Path:
    """A 640x480 mp4v clip: one frame per entry, each a list of (portrait, cx, cy) pasted on a wall."""
    rng = np.random.default_rng(7)
    wall = gradient_background(640, 480, rng)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, (640, 480))
    assert writer.isOpened()
    cache: dict[Path, np.ndarray] = {}
    for people in scenes:
        frame = wall.copy()
        for photo, cx, cy in people:
            portrait = cache.setdefault(photo, read_image(photo))
            paste(frame, portrait, cx, cy, face)
        writer.write(frame)
    writer.release()
    return path


def one_person(path: Path) -> Path:
    """Colin Powell in front of the camera, turning through his four fixture photos, 12 frames each."""
    return write_clip(path, [[(photo, 320.0 + (i % 12), 240.0)] for photo in COLIN for i in range(12)])


def test_a_clip_of_one_person_gives_a_few_diverse_templates(recognizer: Recognizer, tmp_path: Path) -> None:
    result = enrol_clip(recognizer, one_person(tmp_path / "colin.mp4"), max_templates=4)
    assert result.reason == "" and result.embeddings is not None and result.read == 48
    frames = list(result.frames)
    assert 3 <= len(frames) <= 4 and all(b - a >= MIN_FRAMES_APART for a, b in itertools.pairwise(frames))
    # Diverse: the templates come from at least three of the four photos (12 frames each).
    assert len({f // 12 for f in frames}) >= 3
    # They are Colin Powell: each matches his fixture photos' mean far better than anyone else's.
    mean = result.embeddings.mean(axis=0)
    stills = [recognizer.still(read_image(p)).aligned for p in COLIN[:2]]
    ref = recognizer.embed([a for a in stills if a is not None]).mean(axis=0)
    laura = recognizer.embed([recognizer.still(read_image(FACES / "Laura_Bush/Laura_Bush_0004.jpg")).aligned])[0]  # type: ignore[list-item]
    assert float(mean @ ref) / np.linalg.norm(ref) > float(mean @ laura) + 0.3


def test_a_clip_with_two_people_is_refused(recognizer: Recognizer, tmp_path: Path) -> None:
    laura = FACES / "Laura_Bush/Laura_Bush_0004.jpg"
    side_by_side = write_clip(
        tmp_path / "two.mp4", [[(COLIN[0], 180.0 + i, 240.0), (laura, 460.0 - i, 240.0)] for i in range(20)]
    )
    result = enrol_clip(recognizer, side_by_side)
    assert result.embeddings is None and "two people in view" in result.reason  # her head turned: a person still
    # One after the other: two identities, not one person seen twice.
    laura = FACES / "Laura_Bush/Laura_Bush_0016.jpg"
    in_turn = write_clip(
        tmp_path / "turns.mp4",
        [[(COLIN[0], 320.0, 240.0)] for _ in range(15)]
        + [[] for _ in range(20)]
        + [[(laura, 320.0, 240.0)] for _ in range(15)],
    )
    result = enrol_clip(recognizer, in_turn)
    assert result.embeddings is None and "2 different people seen" in result.reason
    # The same person leaving and coming back is one person.
    back = write_clip(
        tmp_path / "back.mp4",
        [[(COLIN[0], 320.0, 240.0)] for _ in range(15)]
        + [[] for _ in range(20)]
        + [[(COLIN[1], 320.0, 240.0)] for _ in range(15)],
    )
    assert enrol_clip(recognizer, back).embeddings is not None


def test_edge_enroll_takes_a_clip_and_reports_each_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k.pem"
    assert main(["gallery", "keygen", "--out", str(key)]) == 0
    photos = tmp_path / "photos"
    (photos / "laura").mkdir(parents=True)
    shutil.copy(FACES / "Laura_Bush/Laura_Bush_0004.jpg", photos / "laura")  # one photo only
    (photos / "venus").mkdir()
    for p in sorted((FACES / "Venus_Williams").glob("*.jpg"))[:3]:
        shutil.copy(p, photos / "venus")
    shutil.copy(FACES / "Jean_Chretien/Jean_Chretien_0003.jpg", photos / "venus")  # somebody else's photo
    clip = one_person(tmp_path / "colin.mp4")
    capsys.readouterr()
    out = tmp_path / "g.bundle"
    args = ["enroll", str(photos), "--video", str(clip), "--identity", "colin", "--label", "Colin Powell"]
    assert main([*args, "--out", str(out), "--key", str(key), "--json", "--plaintext"]) == 0
    rows = {r["identity_id"]: r for r in json.loads(capsys.readouterr().out)["identities"]}
    assert set(rows) == {"laura", "venus", "colin"} and rows["colin"]["label"] == "Colin Powell"
    assert rows["colin"]["templates"] >= 3 and all(a.startswith("colin.mp4#") for a in rows["colin"]["accepted"])
    assert rows["colin"]["self_matched"] == rows["colin"]["templates"] and rows["colin"]["warnings"] == []
    assert rows["laura"]["templates"] == 1 and "one template only" in rows["laura"]["warnings"][0]
    assert rows["venus"]["templates"] == 4 and rows["venus"]["self_matched"] == 3
    (odd,) = rows["venus"]["warnings"]
    assert odd.startswith("Jean_Chretien_0003.jpg does not match the others")
    # gallery inspect, verified, says the same of the bundle it wrote.
    assert main(["gallery", "inspect", str(out), "--pubkey", f"{key}.pub"]) == 0
    text = capsys.readouterr().out
    assert "warning: laura: one template only" in text and "warning: venus: Jean_Chretien_0003.jpg" not in text
    assert "warning: venus: template 1 does not match the others" in text  # the bundle keeps no file names
    assert main(["gallery", "inspect", str(out), "--pubkey", f"{key}.pub", "--json"]) == 0
    report = {r["identity_id"]: r for r in json.loads(capsys.readouterr().out)["identities_report"]}
    assert report["colin"]["templates"] == rows["colin"]["templates"] and report["laura"]["self_matched"] == 0
    # A clip that cannot be used is one line naming it.
    assert (
        main(["enroll", "--video", str(tmp_path / "none.mp4"), "--identity", "x", "--out", str(out), "--key", str(key)])
        == 2
    )
    assert "none.mp4: no such file" in capsys.readouterr().err


def test_an_enrolment_photo_with_two_people_is_refused_but_one_cut_by_the_edge_is_not(
    recognizer: Recognizer, tmp_path: Path
) -> None:
    from edge.gallery.enroll import photo_face

    wall = gradient_background(640, 360, np.random.default_rng(3))
    colin, laura = read_image(COLIN[0]), read_image(FACES / "Laura_Bush/Laura_Bush_0016.jpg")
    both = wall.copy()
    paste(both, colin, 200.0, 180.0, 110.0)
    paste(both, laura, 440.0, 180.0, 100.0)
    cv2.imwrite(str(tmp_path / "two.png"), both)
    aligned, reason = photo_face(recognizer, tmp_path / "two.png")
    assert aligned is None and reason == "2 faces of similar size: enrolment photos must show one person"
    beside = wall.copy()
    paste(beside, colin, 260.0, 180.0, 110.0)
    paste(beside, laura, 605.0, 180.0, 100.0)  # her face cut by the right edge
    cv2.imwrite(str(tmp_path / "beside.png"), beside)
    aligned, reason = photo_face(recognizer, tmp_path / "beside.png")
    assert reason == "" and aligned is not None and abs((aligned.face.box.x0 + aligned.face.box.x1) / 2 - 260) < 30
