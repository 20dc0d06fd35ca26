"""edge identify: every face of every photo, judged with the device's pipeline and thresholds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.imageio import read_image
from edge.cli import main
from edge.demo.scenes import gradient_background, paste

from .conftest import FACES


@pytest.fixture()
def gallery(tmp_path: Path) -> Path:
    root = tmp_path / "gallery"
    for name, skip in (("Colin_Powell", "Colin_Powell_0074.jpg"), ("Laura_Bush", "Laura_Bush_0016.jpg")):
        (root / name).mkdir(parents=True)
        for p in sorted((FACES / name).glob("*.jpg")):
            if p.name != skip:
                shutil.copy(p, root / name / p.name)
    return root


def group_photo(path: Path) -> list[tuple[str, float, float, float]]:
    """A 2000x1200 photo: Colin and Laura (enrolled, other photos), Halle (not enrolled), a tiny face."""
    people = [
        ("Colin_Powell/Colin_Powell_0074.jpg", 500.0, 500.0, 180.0),
        ("Laura_Bush/Laura_Bush_0016.jpg", 1100.0, 480.0, 150.0),
        ("Halle_Berry/Halle_Berry_0001.jpg", 1600.0, 520.0, 160.0),
        ("Venus_Williams/Venus_Williams_0004.jpg", 1800.0, 1000.0, 15.0),
    ]
    frame = gradient_background(2000, 1200, np.random.default_rng(5))
    for name, cx, cy, face in people:
        paste(frame, read_image(FACES / name), cx, cy, face)
    cv2.imwrite(str(path), frame)
    return people


def test_identify_a_group_photo_as_json(tmp_path: Path, gallery: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "photos" / "group.jpg"
    photo.parent.mkdir()
    placed = group_photo(photo)
    (tmp_path / "photos" / "portrait.jpg").write_bytes((FACES / "Laura_Bush" / "Laura_Bush_0016.jpg").read_bytes())
    assert main(["identify", str(tmp_path / "photos"), "--gallery", str(gallery), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    group = [r for r in rows if r["file"].endswith("group.jpg")]
    by_place = {}
    for r in group:
        x0, y0, x1, y1 = r["bbox"]
        near = [p for p in placed if abs((x0 + x1) / 2 - p[1]) < p[3] / 2 and abs((y0 + y1) / 2 - p[2]) < p[3]]
        assert len(near) == 1, r
        by_place[near[0][0].split("/")[0]] = r
    assert set(by_place) == {"Colin_Powell", "Laura_Bush", "Halle_Berry"}  # the tiny face: under the gate
    assert (
        by_place["Colin_Powell"]["identity_id"] == "Colin_Powell"
        and by_place["Laura_Bush"]["identity_id"] == "Laura_Bush"
    )
    stranger = by_place["Halle_Berry"]
    assert stranger["identity_id"] is None and stranger["quality_ok"] and stranger["score"] < stranger["threshold"]
    for r in group:
        assert set(r) >= {
            "file",
            "face",
            "bbox",
            "identity_id",
            "score",
            "threshold",
            "est_false_match_rate",
            "quality_ok",
            "reason",
        }
        if r["identity_id"]:
            assert r["score"] >= r["threshold"] and 0 < r["est_false_match_rate"] < 1e-3
    (portrait,) = [r for r in rows if r["file"].endswith("portrait.jpg")]
    assert portrait["identity_id"] == "Laura_Bush" and portrait["face"] == 0


def test_identify_reports_bad_photos_and_exits_2(
    tmp_path: Path, gallery: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 400, 3), 128, np.uint8))
    assert main(["identify", str(bad), str(blank), "--gallery", str(gallery), "--json"]) == 2
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["face"] is None and "broken.jpg is corrupt" in rows[0]["reason"]
    assert rows[1]["face"] is None and rows[1]["reason"] == "no face found"
    assert main(["identify", str(tmp_path / "nope.jpg"), "--gallery", str(gallery)]) == 2
    assert "nope.jpg: no such file or folder" in capsys.readouterr().err
    assert main(["identify", str(blank), "--gallery", str(tmp_path / "g.bundle")]) == 2
    assert "no such folder or bundle" in capsys.readouterr().err


def test_identify_with_a_signed_bundle_needs_its_key(
    tmp_path: Path, gallery: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.pem"
    assert main(["gallery", "keygen", "--out", str(key)]) == 0
    bundle = tmp_path / "g.bundle"
    assert main(["device", "key", "--state-dir", str(tmp_path / "door")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["enroll", str(gallery), "--out", str(bundle), "--key", str(key), "--recipient", line]) == 0
    probe = FACES / "Colin_Powell" / "Colin_Powell_0074.jpg"
    assert main(["identify", str(probe), "--gallery", str(bundle)]) == 2
    assert "give the key that signed it with --trusted-key" in capsys.readouterr().err
    signed = ["identify", str(probe), "--gallery", str(bundle), "--trusted-key", f"{key}.pub"]
    assert main(signed) == 2  # sealed: only a device it was made for opens it
    assert "rejected at recipient: a sealed bundle, and this side has no device key" in capsys.readouterr().err
    assert main([*signed, "--device-key", str(tmp_path / "door" / "device.key")]) == 0
    out = capsys.readouterr().out
    assert "Colin_Powell" in out.splitlines()[-1] and "est. false-match rate" in out.splitlines()[-1]


@pytest.mark.slow
def test_enroll_and_identify_print_only_the_projects_own_lines(tmp_path: Path, gallery: Path) -> None:
    """Issue 27: 'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.' on every command. As a user runs
    them (child processes, nothing captured in-process): stdout is the command's own output, and every
    stderr line is one of the project's log lines or its one-line error."""
    import re
    import subprocess
    import sys

    from edge.device.keys import public_line
    from edge.gallery.bundle import generate_key

    from .support import device_key

    key = tmp_path / "k.pem"
    generate_key(key)
    own = re.compile(r"^(\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) edge[.\w]*: |edge: |enroll: )")
    commands = [
        [
            "enroll",
            str(gallery),
            "--out",
            str(tmp_path / "g.bundle"),
            "--key",
            str(key),
            "--gallery-name",
            "g",
            "--recipient",
            public_line(device_key(tmp_path / "door").public),
        ],
        ["identify", str(FACES / "Colin_Powell"), "--gallery", str(gallery)],
    ]
    for args in commands:
        run = subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "TensorFlow Lite" not in run.stdout + run.stderr and "XNNPACK" not in run.stdout + run.stderr
        foreign = [line for line in run.stderr.splitlines() if line.strip() and not own.match(line)]
        assert foreign == [], (args[0], foreign)
