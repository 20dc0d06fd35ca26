from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.errors import InputError
from edge.recognition.pipeline import Recognizer
from edge_lab import lfw

from .conftest import FACES


def test_view1_and_view2_formats(tmp_path: Path) -> None:
    v1 = tmp_path / "v1.txt"
    v1.write_text("2\nA 1 2\nB 1 3\nA 1 B 2\nC 4 D 5\n")
    p = lfw.parse_pairs(v1)
    assert not p.has_folds and len(p.pairs) == 4
    assert [x.same for x in p.pairs] == [True, True, False, False]
    v2 = tmp_path / "v2.txt"
    v2.write_text("2 1\nA 1 2\nA 1 B 2\nC 1 3\nC 4 D 5\n")
    p2 = lfw.parse_pairs(v2)
    assert p2.has_folds and p2.folds == 2 and [x.fold for x in p2.pairs] == [0, 0, 1, 1]


def test_malformed_pairs_file_is_located(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("1\nA 1 2\nA x B 2\n")
    with pytest.raises(InputError, match="line 3"):
        lfw.parse_pairs(bad)
    short = tmp_path / "short.txt"
    short.write_text("3\nA 1 2\n")
    with pytest.raises(InputError, match="promises 6 pairs"):
        lfw.parse_pairs(short)


def test_cross_validation_and_threshold_at_fmr() -> None:
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    scores = np.where(same, rng.normal(0.7, 0.1, 600), rng.normal(0.1, 0.1, 600)).astype(np.float32)
    folds = np.arange(600) % 10
    mean, std, _ = lfw.cross_validated_accuracy(scores, same, folds)
    assert 0.98 < mean <= 1.0 and std < 0.05
    impostors = rng.normal(0, 0.1, 100_000).astype(np.float32)
    t = lfw.threshold_at_fmr(impostors, 1e-3)
    assert (impostors >= t).mean() <= 1e-3 < (impostors >= t - 0.01).mean()
    table = lfw.calibration_table(impostors)
    assert table[0][0] == pytest.approx(0.1) and all(a[1] < b[1] for a, b in itertools.pairwise(table))


def test_impostor_scores_skip_same_person_pairs() -> None:
    emb = np.eye(4, dtype=np.float32)
    person = np.array([0, 0, 1, 2])
    assert len(lfw.impostor_scores(emb, person, block=2)) == 5  # 6 pairs less the one same-person pair


def test_a_covering_pairs_file_names_every_image_and_parses(tmp_path: Path) -> None:
    root = tmp_path / "lfw"
    for name, count in (("Ann_A", 3), ("Bob_B", 2), ("Cy_C", 1), ("Di_D", 1)):
        (root / name).mkdir(parents=True)
        for n in range(1, count + 1):
            (root / name / f"{name}_{n:04d}.jpg").write_bytes(b"")
    out = tmp_path / "pairs.txt"
    assert main(["eval", "pairs", "--root", str(root), "--out", str(out)]) == 0
    parsed = lfw.parse_pairs(out)
    named = {(p.name1, p.n1) for p in parsed.pairs} | {(p.name2, p.n2) for p in parsed.pairs}
    assert len(named) == 7  # every image of the folder
    same = [p for p in parsed.pairs if p.same]
    assert len(same) == 3 and len(parsed.pairs) == 6  # balanced: 3 same, 3 different
    assert {("Cy_C", 1), ("Di_D", 1)} <= named


def test_eval_cli_on_fixture_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "3\n"
        "Colin_Powell 38 74\nVenus_Williams 1 4\nLaura_Bush 4 11\n"
        "Colin_Powell 38 Halle_Berry 1\nVenus_Williams 1 Angelina_Jolie 3\nLaura_Bush 4 Missing_Person 1\n"
    )
    assert main(["eval", "lfw", "--root", str(FACES), "--pairs", str(pairs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "pairs",
        "skipped",
        "no_face",
        "accuracy_mean",
        "accuracy_std",
        "tar_at_fmr_1e-3",
        "tar_at_fmr_1e-4",
        "default_threshold",
        "stated_fmr",
        "observed_fmr",
        "impostor_pairs",
        "model_sha256",
    ):
        assert key in out
    assert out["pairs"] == 5 and out["skipped"] == 1 and out["no_face"] == 0
    assert out["accuracy_mean"] == 1.0
    assert out["stated_fmr"] == 1e-4 and len(out["model_sha256"]) == 64


@pytest.mark.slow
def test_compare_dlib_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # face_recognition (dlib) is installed by tests/run from dlib's prebuilt wheel: no skip on a fresh machine.
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "2\nColin_Powell 38 74\nVenus_Williams 1 4\nColin_Powell 38 Halle_Berry 1\nVenus_Williams 1 Angelina_Jolie 3\n"
    )
    assert main(["eval", "lfw", "--root", str(FACES), "--pairs", str(pairs), "--compare-dlib", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.5 <= out["dlib_accuracy_mean"] <= 1.0 and out["dlib_encode_ms_per_face_p50"] > 0
    assert out["speedup_per_face"] == pytest.approx(
        out["dlib_encode_ms_per_face_p50"] / out["edge_ms_per_face_p50"], rel=0.05
    )


FEMALE = {"Angelina_Jolie", "Halle_Berry", "Venus_Williams", "Laura_Bush", "Condoleezza_Rice"}


def test_eval_lfw_reports_error_rates_per_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "3\nColin_Powell 38 74\nVenus_Williams 1 4\nLaura_Bush 4 11\n"
        "Colin_Powell 38 Halle_Berry 1\nVenus_Williams 1 Angelina_Jolie 3\nLaura_Bush 4 Jean_Chretien 3\n"
    )
    groups = tmp_path / "groups.csv"
    files = sorted(p.name for p in FACES.glob("*/*.jpg"))
    unlabelled = "Jean_Chretien_0003.jpg"
    groups.write_text(
        "image,group\n"
        + "".join(f"{f},{'female' if f.rsplit('_', 1)[0] in FEMALE else 'male'}\n" for f in files if f != unlabelled)
    )
    assert main(["eval", "lfw", "--root", str(FACES), "--pairs", str(pairs), "--groups", str(groups), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # The images the pairs name: Colin 38/74, Venus 1/4, Laura 4/11, Halle 1, Angelina 3, Jean 3.
    person = {
        "Colin_Powell": "m",
        "Venus_Williams": "f",
        "Laura_Bush": "f",
        "Halle_Berry": "f",
        "Angelina_Jolie": "f",
        "Jean_Chretien": None,
    }
    images = [
        ("Colin_Powell", 2),
        ("Venus_Williams", 2),
        ("Laura_Bush", 2),
        ("Halle_Berry", 1),
        ("Angelina_Jolie", 1),
        ("Jean_Chretien", 1),
    ]
    expanded = [(name, person[name]) for name, count in images for _ in range(count)]
    pairs_of = lambda keep: sum(  # noqa: E731
        1 for a, b in itertools.combinations(expanded, 2) if a[0] != b[0] and keep(a[1], b[1])
    )
    assert out["groups"]["female"]["impostor_pairs"] == pairs_of(lambda x, y: x == y == "f")
    assert out["groups"]["male"]["impostor_pairs"] == 0  # one man labelled, one unlabelled
    assert out["cross_group"]["impostor_pairs"] == pairs_of(lambda x, y: {x, y} == {"f", "m"})
    assert out["all"]["impostor_pairs"] == pairs_of(lambda x, y: True) == out["impostor_pairs"]
    assert out["groups"]["female"]["genuine_pairs"] == 2 and out["groups"]["male"]["genuine_pairs"] == 1
    assert out["groups"]["female"]["fnmr"] == 0.0 and out["groups"]["female"]["observed_fmr"] == 0.0
    assert set(out["fmr_at_stated"]) == {"0.001", "0.0001", "1e-05", "1e-06"}
    t = [out["fmr_at_stated"][k]["threshold"] for k in ("0.001", "0.0001", "1e-05", "1e-06")]
    assert t == sorted(t) and len(set(t)) == 4
    # The DET curve per group, and the figure drawn from it.
    assert set(out["det"]) >= {"all", "female"} and out["operating_point"]["threshold"] == out["default_threshold"]
    assert all(0 < fmr <= 1 and 0 <= fnmr <= 1 for curve in out["det"].values() for fmr, fnmr in curve)
    png = tmp_path / "det.png"
    assert (
        main(["eval", "lfw", "--root", str(FACES), "--pairs", str(pairs), "--groups", str(groups), "--plot", str(png)])
        == 0
    )
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] > 400 and image.shape[0] > 300
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("file,sex\nx.jpg,f\n")
    assert main(["eval", "lfw", "--root", str(FACES), "--pairs", str(pairs), "--groups", str(bad)]) == 2
    assert "the first line must be 'image,group'" in capsys.readouterr().err


def test_the_worst_group_table_holds_for_every_group_and_extrapolates_by_ratio() -> None:
    from edge_lab.groups import worst_group_table

    rng = np.random.default_rng(3)
    # Group "a" is shifted up: at any threshold its false-match rate is a few times the others'.
    a = rng.normal(0.05, 0.1, 300_000).astype(np.float32)
    b = rng.normal(0.0, 0.1, 2_000_000).astype(np.float32)
    cross = rng.normal(-0.05, 0.1, 2_000_000).astype(np.float32)
    everything = np.concatenate([a, b, cross])
    table = worst_group_table({"all": everything, "a": a, "b": b, "cross_group": cross})
    rows = np.array(table.rows)
    assert np.all(np.diff(rows[:, 0]) < 0) and np.all(np.diff(rows[:, 1]) > 0)
    for f, t in table.rows:
        if f * len(a) >= 10:  # measured directly: the stated rate holds inside group "a" and overall
            assert (a >= t).mean() <= f * 1.0001 and (everything >= t).mean() <= f * 1.0001
    assert set(table.governing) >= {"a"} and table.floors["a"] > table.floors["b"]
    assert table.ratios["a"] > 1.5
    # Below "a"'s floor its rate is the all-pairs rate times its ratio: thresholds keep climbing.
    below = [t for f, t in table.rows if f * len(a) < 10]
    assert below and below[0] > max(t for f, t in table.rows if f * len(a) >= 10)
    plain = lfw.calibration_table(everything)
    assert all(w >= p for (_, w), (_, p) in zip(table.rows, plain, strict=False))  # never looser than all-pairs


def test_a_margin_makes_every_row_promise_twice_what_was_measured() -> None:
    from edge_lab.groups import worst_group_table

    rng = np.random.default_rng(4)
    scores = {"all": rng.normal(0, 0.1, 1_000_000).astype(np.float32)}
    plain = worst_group_table(scores)
    safe = worst_group_table(scores, margin=2.0)
    for f, t in safe.rows:
        assert (scores["all"] >= t).mean() <= f / 2 * 1.0001  # measured at f/2, promised f
    # The row promising 1e-3 is the plain table's row for 5e-4.
    from edge.recognition.calibration import CalibrationTable

    assert CalibrationTable.from_rows(safe.rows).threshold_for(1e-3) == pytest.approx(
        CalibrationTable.from_rows(plain.rows).threshold_for(5e-4), abs=2e-3
    )


@pytest.mark.slow
def test_the_service_bench_confirms_the_demo_people_and_measures_a_steady_empty_hall(
    recognizer: Recognizer, tmp_path: Path
) -> None:
    from edge.demo.assets import ENROLLED
    from edge_lab.bench import service_bench

    r = service_bench(recognizer, FACES, tmp_path / "work", 640, 480, idle_frames=60)
    assert sorted(r["confirmations"]) == sorted(ENROLLED)  # the four enrolled, no stranger
    assert r["service_frames"] > 0 and r["service_fps"] > 0
    # Steady: one sweep window every idle_every frames, neither the first round nor the
    # round after it (which passes over what the first round has just seen).
    assert r["empty_detector_invokes_per_frame"] == round(1 / recognizer.settings.detection.idle_every, 2)


def test_eval_identify_counts_every_person_cast(capsys: pytest.CaptureFixture[str]) -> None:
    """Person-level recall over everyone cast, on the fixtures' eight people (an LFW-style folder)."""
    args = [
        "eval",
        "identify",
        "--root",
        str(FACES),
        "--photos",
        "1",
        "--gallery-size",
        "6",
        "--people",
        "4",
        "--strangers",
        "2",
        "--repeats",
        "2",
        "--json",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["photos"] == 1 and out["gallery_size"] == 6 and len(out["runs"]) == 2
    for run in out["runs"]:
        missed = sum(run["missed_by_reason"].values())
        assert run["identified"] + missed + run["wrong_identities"] - run["wrong_identities_of_strangers"] == 4
        assert run["recall"] == pytest.approx(run["identified"] / 4) and run["identified"] <= run["enrolled"]
        # Filled with others whose photos pass, up to six (the fixtures have only eight people).
        assert run["enrolled"] < run["gallery_identities"] <= 6
        assert run["strangers"] == 2
    assert out["recall_mean"] == pytest.approx(np.mean([r["recall"] for r in out["runs"]]))
    assert out["recall_mean"] >= 0.5 and out["wrong_identities"] == 0  # the fixtures' people are clear photos
    # Grey probes (a night camera) are judged with the grey tables, and it says so.
    assert main([*args[:-1], "--condition", "grey", "--json"]) == 0
    grey = json.loads(capsys.readouterr().out)
    assert grey["condition"] == "grey" and grey["wrong_identities"] == 0
    # Asking for more people than have enough photos is one line.
    assert main([*args[:4], "--photos", "3", "--people", "5"]) == 2
    assert "people have 4 photos or more, 5 wanted" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_range_runs_the_scenes_on_two_cameras_at_once_and_scores_each(capsys: pytest.CaptureFixture[str]) -> None:
    """The same composited scenes on two cameras of one device (one loop, one batch of faces a round):
    every camera's visits are scored on their own, and together."""
    args = [
        "eval",
        "range",
        "--root",
        str(FACES),
        "--size",
        "640x480",
        "--distances",
        "1",
        "--people",
        "3",
        "--strangers",
        "1",
        "--distractors",
        "1",
        "--frames",
        "30",
        "--scene",
        "wall",
        "--json",
    ]
    assert main([*args, "--cameras", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    row = two["by_distance"]["1"]
    assert two["cameras"] == 2 and len(row["by_camera"]) == 2 and row["enrolled_visits"] == 6
    assert row["recall"] == pytest.approx(sum(c["recall"] for c in row["by_camera"]) / 2, abs=1e-3)
    assert row["false_events"] == sum(c["false_events"] for c in row["by_camera"]) == 0
    assert main(args) == 0  # one camera: the first camera's scenes alone, as before
    one = json.loads(capsys.readouterr().out)["by_distance"]["1"]
    assert one["enrolled_visits"] == 3 and "by_camera" not in one
    assert one["recall"] == row["by_camera"][0]["recall"]  # camera 0 sees what the one camera sees


@pytest.mark.slow
def test_the_cameras_bench_serves_every_camera_both_ways(recognizer: Recognizer, tmp_path: Path) -> None:
    from edge_lab.cameras import cameras_bench

    # Until every camera has had an event (a condition, not a time: a busy machine takes longer), at most 120 s.
    r = cameras_bench(
        recognizer,
        FACES,
        tmp_path / "work",
        cameras=2,
        width=640,
        height=480,
        seconds=120,
        until_events=1,
        capacity_seconds=2,
    )
    for mode in ("live_shared", "live_per_camera"):
        cams = r[mode]
        assert len(cams) == 2 and all(c["events"] >= 1 and c["fps"] > 0 for c in cams), (mode, cams)
        assert all(c["event_ms_p90"] is not None and c["event_ms_p90"] >= c["event_ms_p50"] for c in cams)
    assert r["capacity_fps_per_camera"] > 0 and r["idle_ms_per_round"] > 0
