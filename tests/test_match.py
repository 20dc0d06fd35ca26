"""Calibrated matching: open-set correction, margin, estimated FMR, size bands, snapshots."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge.device.settings import MatchSettings
from edge.recognition.calibration import (
    LOOK_LEVELS,
    TEMPLATE_LEVELS,
    Band,
    Calibration,
    CalibrationTable,
    parse_calibrations,
)
from edge.recognition.match import Gallery, GalleryHolder, Matcher

# Rates 1e-1 … 1e-6 at thresholds 0.2 … 0.7 (large faces); small faces need 0.1 more.
LARGE = CalibrationTable.from_rows([[10.0**-k, 0.1 + 0.1 * k] for k in range(1, 7)], 1_000_000)
SMALL = CalibrationTable.from_rows([[10.0**-k, 0.2 + 0.1 * k] for k in range(1, 7)], 1_000_000)


def every_kind(table: CalibrationTable) -> dict[tuple[int, int], CalibrationTable]:
    """The same table for every evidence kind: a calibration any gallery can be judged with."""
    return {(k, m): table for k in TEMPLATE_LEVELS for m in LOOK_LEVELS if (k, m) != (1, 1)}


CAL = Calibration(
    "sha", "mesh5+flip", (Band(80, LARGE, "80+ px", every_kind(LARGE)), Band(0, SMALL, "0-80 px", every_kind(SMALL)))
)
ONE_KIND = Calibration("sha", "mesh5+flip", (Band(80, LARGE, "80+ px"), Band(0, SMALL, "0-80 px")))


def unit(v: list[float]) -> np.ndarray:
    a = np.zeros(16, np.float32)
    a[: len(v)] = v
    return a / np.linalg.norm(a)


def gallery(n: int, version: int = 1) -> Gallery:
    eye = np.eye(16, dtype=np.float32)
    return Gallery.build([(f"id{i}", f"Person {i}", eye[i : i + 1]) for i in range(n)], version=version)


def test_open_set_correction_divides_the_rate_by_the_gallery_size() -> None:
    on = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3))
    off = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3, open_set_correction=False))
    assert on.snapshot(gallery(1)).threshold == pytest.approx(0.4)  # 1e-3 per comparison
    assert on.snapshot(gallery(10)).threshold == pytest.approx(0.5)  # 1e-3 / 10 = 1e-4
    assert off.snapshot(gallery(10)).threshold == pytest.approx(0.4)
    assert on.snapshot(gallery(10)).per_identity_fmr == pytest.approx(1e-4)


def test_estimated_false_match_rate_is_the_table_rate_times_the_gallery_size() -> None:
    snap = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3)).snapshot(gallery(5))
    (m,) = snap.match(unit([0.6, 0.8])[None])  # cosine 0.8 with id1, 0.6 with id0
    assert m.identity_id == "id1" and m.score == pytest.approx(0.8)
    assert m.est_false_match_rate == pytest.approx(LARGE.fmr_at(0.8) * 5)
    no_corr = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3, open_set_correction=False)).snapshot(gallery(5))
    assert no_corr.match(unit([0.6, 0.8])[None])[0].est_false_match_rate == pytest.approx(LARGE.fmr_at(0.8))


def test_min_margin_refuses_a_face_between_two_identities() -> None:
    probe = unit([0.7, 0.71])[None]  # almost equally close to id0 and id1, both above 0.5
    loose = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3)).snapshot(gallery(3))
    strict = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3, min_margin=0.05)).snapshot(gallery(3))
    (a,), (b,) = loose.match(probe), strict.match(probe)
    assert a.accepted and a.margin < 0.05
    assert not b.accepted and b.identity_id == a.identity_id and b.score == a.score


def test_each_face_is_judged_with_the_table_of_its_size_band() -> None:
    snap = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3)).snapshot(gallery(1))
    probe = np.stack([unit([0.45, 0.89])] * 2)  # cosine 0.45 with id0
    big, small = snap.match(probe, face_px=[120.0, 40.0])
    assert (big.band, small.band) == ("80+ px", "0-80 px")
    assert big.threshold == pytest.approx(0.4) and big.accepted
    assert small.threshold == pytest.approx(0.5) and not small.accepted
    assert small.est_false_match_rate == pytest.approx(SMALL.fmr_at(small.score))
    assert big.est_false_match_rate == pytest.approx(LARGE.fmr_at(big.score))
    assert big.est_false_match_rate < small.est_false_match_rate
    with pytest.raises(ValueError, match="2 queries but 1 face sizes"):
        snap.match(probe, face_px=[50.0])


def test_manifest_bands_parse_in_order_and_old_manifests_mean_one_band() -> None:
    rows = [[1e-1, 0.2], [1e-2, 0.3]]
    cal = parse_calibrations(
        [
            {"embedder_sha256": "s", "pipeline": "p", "table": rows, "band": {"min_px": 30, "max_px": 50}},
            {"embedder_sha256": "s", "pipeline": "p", "table": rows, "band": {"min_px": 80}},
            {"embedder_sha256": "s", "pipeline": "p", "table": rows, "band": {"min_px": 50, "max_px": 80}},
        ]
    )[0]
    assert [b.label for b in cal.bands] == ["80+ px", "50-80 px", "30-50 px"]
    assert cal.band_for(60).label == "50-80 px" and cal.band_for(10).label == "30-50 px"
    (old,) = parse_calibrations([{"embedder_sha256": "s", "pipeline": "p", "table": rows}])
    assert len(old.bands) == 1 and old.band_for(5).min_px == 0
    with pytest.raises(ValueError, match="decreasing rates"):
        CalibrationTable.from_rows([[1e-2, 0.3], [1e-1, 0.2]])


def test_empty_gallery_matches_nobody_and_names_its_version() -> None:
    snap = Matcher(CAL, MatchSettings()).snapshot(Gallery.build([], version=4))
    (m,) = snap.match(unit([1.0])[None], [100.0])
    assert m.identity_id is None and not m.accepted and m.gallery_version == 4


def test_a_swap_never_pairs_one_gallery_with_another_gallerys_threshold() -> None:
    holder = GalleryHolder(Matcher(CAL, MatchSettings(max_false_match_rate=1e-3)), gallery(1, version=1))
    small, big = gallery(1, version=1), gallery(8, version=2)
    expected = {1: holder.matcher.snapshot(small).threshold, 2: holder.matcher.snapshot(big).threshold}
    assert expected[1] != expected[2]
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            holder.swap(big)
            holder.swap(small)

    t = threading.Thread(target=swapper)
    t.start()
    try:
        for _ in range(20_000):
            snap = holder.current
            assert snap.threshold == expected[snap.version] and len(snap) == (1 if snap.version == 1 else 8)
    finally:
        stop.set()
        t.join()


def test_expiry_update_does_not_undo_a_concurrent_swap() -> None:
    holder = GalleryHolder(Matcher(CAL, MatchSettings()), gallery(3, version=1))
    seen: list[int] = []
    holder.on_change(lambda snap: seen.append(snap.version))
    holder.update(lambda snap: snap.gallery.without({"id0"}))
    assert holder.current.gallery.identity_ids == ("id1", "id2") and holder.current.version == 1
    holder.swap(gallery(2, version=2))
    assert holder.update(lambda snap: None) is holder.current  # no change, no notification
    assert seen == [1, 2]


def shifted(by: float) -> CalibrationTable:
    """LARGE with every threshold ``by`` higher: a stricter table, as a template of more photos has."""
    return CalibrationTable.from_rows([[10.0**-k, 0.1 + 0.1 * k + by] for k in range(1, 7)], 100_000)


KINDS = {
    (2, 1): shifted(0.01),
    (3, 1): shifted(0.02),
    (5, 1): shifted(0.03),
    **{(k, 3): shifted(0.05) for k in (1, 2, 3, 5)},
}
MULTI = Calibration("sha", "mesh5+flip", (Band(0, LARGE, "all", KINDS),))


def test_an_identity_of_several_photos_is_their_mean_judged_with_the_table_of_its_photos() -> None:
    eye = np.eye(16, dtype=np.float32)
    alice = np.stack([unit([1, 0.3]), unit([1, -0.3])])  # two photos either side of her mean
    bob = np.stack([eye[3], eye[3], eye[3], eye[3]])  # four photos: judged with the five-photo table
    g = Gallery.build([("alice", None, alice), ("bob", None, bob), ("carol", None, eye[5:6])])
    assert g.counts.tolist() == [2, 4, 1]
    assert np.allclose(g.templates[0], unit([1, 0])) and np.allclose(g.photos(1), bob)
    snap = Matcher(MULTI, MatchSettings(max_false_match_rate=1e-3)).snapshot(g)  # 3 identities: 3.3e-4 each
    (bt,) = snap.bands
    per_id = 1e-3 / 3
    assert bt.single.tolist() == pytest.approx(
        [shifted(0.01).threshold_for(per_id), shifted(0.03).threshold_for(per_id), LARGE.threshold_for(per_id)]
    )
    assert bt.fused.tolist() == pytest.approx([shifted(0.05).threshold_for(per_id)] * 3)
    (m,) = snap.match(unit([1, 0])[None])  # her mean exactly: scored 1 against her template
    assert m.identity_id == "alice" and m.score == pytest.approx(1.0) and m.templates == 2 and m.accepted
    assert m.threshold == pytest.approx(bt.single[0]) and m.est_false_match_rate == pytest.approx(
        shifted(0.01).fmr_at(1.0) * 3
    )
    # Fused looks are judged with the fused tables.
    (f,) = snap.match(unit([1, 0])[None], looks=4)
    assert f.looks == 4 and f.threshold == pytest.approx(bt.fused[0])


def test_each_identity_has_its_own_threshold_and_only_the_most_similar_is_taken() -> None:
    # Carol (one photo, table LARGE) and Dave (three photos, a table that is lower here): each is
    # judged with their own threshold, and a face is given only to the identity it resembles most.
    lenient = CalibrationTable.from_rows([[10.0**-k, 0.05 * k] for k in range(1, 7)], 100_000)
    cal = Calibration("sha", "p", (Band(0, LARGE, "all", {**KINDS, (3, 1): lenient}),))
    eye = np.eye(16, dtype=np.float32)
    g = Gallery.build([("carol", None, eye[0:1]), ("dave", None, np.stack([eye[1]] * 3))])
    snap = Matcher(cal, MatchSettings(max_false_match_rate=1e-3, open_set_correction=False)).snapshot(g)
    t_carol, t_dave = snap.bands[0].single.tolist()
    assert (t_carol, t_dave) == pytest.approx((0.4, 0.15))
    (m,) = snap.match(unit([0.10, 0.30, 0.949])[None])  # 0.30 for Dave: over his threshold, under Carol's
    assert m.identity_id == "dave" and m.accepted and m.threshold == pytest.approx(t_dave)
    (m,) = snap.match(unit([0.35, 0.30, 0.887])[None])  # more like Carol, under her threshold; Dave's reached
    assert m.identity_id == "carol" and not m.accepted and m.margin == pytest.approx(0.05, abs=1e-3)


def test_a_gallery_needing_a_table_the_calibration_lacks_is_refused_at_the_snapshot() -> None:
    from edge.errors import ModelError

    eye = np.eye(16, dtype=np.float32)
    one_photo = Matcher(ONE_KIND, MatchSettings()).snapshot(Gallery.build([("a", None, eye[0:1])]))
    assert np.isinf(one_photo.bands[0].fused).all()  # fusion not calibrated: it never accepts
    with pytest.raises(ModelError, match="3 photo"):
        Matcher(ONE_KIND, MatchSettings()).snapshot(Gallery.build([("a", None, np.stack([eye[0]] * 3))]))


def test_manifest_kinds_and_conditions_parse_into_bands() -> None:
    rows = [[1e-2, 0.4], [1e-3, 0.5]]
    entry = {"embedder_sha256": "s", "pipeline": "p", "band": {"min_px": 0, "max_px": None}, "table": rows}
    parsed = parse_calibrations(
        [
            entry,
            {**entry, "templates": 3, "table": [[1e-2, 0.41], [1e-3, 0.52]]},
            {**entry, "templates": 5, "table": [[1e-2, 0.42], [1e-3, 0.53]]},
            {**entry, "condition": "grey", "table": [[1e-2, 0.45], [1e-3, 0.55]]},
        ]
    )
    by = {c.condition: c for c in parsed}
    assert set(by) == {"colour", "grey"}
    band = by["colour"].bands[0]
    assert band.table_for(1).threshold_for(1e-3) == 0.5 and band.table_for(3).threshold_for(1e-3) == 0.52
    assert band.table_for(4).threshold_for(1e-3) == 0.53  # four photos: the next level up, five
    assert band.table_for(9).threshold_for(1e-3) == 0.53  # beyond the levels: the largest
    assert by["grey"].bands[0].table.threshold_for(1e-3) == 0.55
    with pytest.raises(ValueError, match="templates must be one of"):
        parse_calibrations([{**entry, "templates": 4}])
    with pytest.raises(ValueError, match="no one-photo, one-look table"):
        parse_calibrations([{**entry, "templates": 2}])


def test_a_grey_face_is_judged_with_the_grey_tables_where_they_exist() -> None:
    grey = Calibration(
        "sha", "mesh5+flip", (Band(0, shifted(0.04), "all", {k: shifted(0.06) for k in KINDS}),), condition="grey"
    )
    matcher = Matcher(MULTI, MatchSettings(), [grey])
    snap = matcher.snapshot(gallery(2))
    q = np.eye(16, dtype=np.float32)[:1]
    colour, night = snap.match(np.concatenate([q, q]), conditions=["colour", "grey"])
    assert colour.condition == "colour" and night.condition == "grey" and night.threshold > colour.threshold
    (only_colour,) = Matcher(MULTI, MatchSettings()).snapshot(gallery(2)).match(q, conditions=["grey"])
    assert only_colour.condition == "colour"  # not calibrated for grey: colour's tables, and it says so


def test_a_gallery_less_some_identities_keeps_the_others_rows_and_its_width() -> None:
    rng = np.random.default_rng(0)
    g = Gallery.build(
        [(f"i{k}", f"L{k}", rng.normal(size=(k % 3 + 1, 8)).astype(np.float32)) for k in range(6)], 5, "n"
    )
    less = g.without({"i2", "i5"})
    assert less.identity_ids == ("i0", "i1", "i3", "i4") and less.labels == ("L0", "L1", "L3", "L4")
    assert (less.version, less.name) == (5, "n") and less.counts.tolist() == [1, 2, 1, 2]
    for j, ident in enumerate(less.identity_ids):
        i = g.identity_ids.index(ident)
        assert np.array_equal(less.photos(j), g.photos(i)) and np.array_equal(less.templates[j], g.templates[i])
    assert less.owner.tolist() == [0, 1, 1, 2, 3, 3] and less.starts.tolist() == [0, 1, 3, 4]
    assert not less.embeddings.flags.writeable and not less.templates.flags.writeable
    nobody = g.without(set(g.identity_ids))
    assert len(nobody) == 0 and nobody.embeddings.shape == (0, 8) and nobody.templates.shape == (0, 8)


def test_a_single_look_reports_the_single_look_rate_and_a_fused_one_the_fused_rate() -> None:
    """The tables of one look and of fused looks differ: each match reports its own kind's rate."""
    fused_table = CalibrationTable.from_rows([[10.0**-k, 0.05 + 0.1 * k] for k in range(1, 7)], 1_000_000)
    kinds = {
        (k, m): (fused_table if m > 1 else LARGE) for k in TEMPLATE_LEVELS for m in LOOK_LEVELS if (k, m) != (1, 1)
    }
    cal = Calibration("sha", "mesh5+flip", (Band(0, LARGE, "0+ px", kinds),))
    snap = Matcher(cal, MatchSettings(max_false_match_rate=1e-3, open_set_correction=False)).snapshot(
        Gallery.build([("id0", None, np.array([[1.0, 0.0]], np.float32))])
    )
    q = np.array([[0.45, np.sqrt(1 - 0.45**2)]], np.float32)
    (one,) = snap.match(q, looks=1)
    (fused,) = snap.match(q, looks=2)
    assert one.est_false_match_rate == pytest.approx(LARGE.fmr_at(float(q[0, 0])))
    assert fused.est_false_match_rate == pytest.approx(fused_table.fmr_at(float(q[0, 0])))
    assert one.est_false_match_rate != fused.est_false_match_rate


def test_two_fused_looks_without_fused_tables_never_accept() -> None:
    snap = Matcher(ONE_KIND, MatchSettings(max_false_match_rate=1e-3)).snapshot(
        Gallery.build([("id0", None, np.array([[1.0, 0.0]], np.float32))])
    )
    (m,) = snap.match(np.array([[1.0, 0.0]], np.float32), looks=2)
    assert not m.accepted and m.threshold == float("inf")
    (one,) = snap.match(np.array([[1.0, 0.0]], np.float32), looks=1)
    assert one.accepted


def test_a_gallery_refuses_doubled_ids_and_identities_without_embeddings_in_words() -> None:
    with pytest.raises(ValueError, match="^duplicate identity ids in gallery$"):
        Gallery.build([("a", None, np.eye(2, dtype=np.float32)[:1]), ("a", None, np.eye(2, dtype=np.float32)[1:])])
    with pytest.raises(ValueError, match="^an identity has no embedding$"):
        Gallery.build([("a", None, np.zeros((0, 2), np.float32))])
    g = Gallery.build([("a", None, np.array([[3.0, 4.0]]))])  # float64 in: float32 kept
    assert g.embeddings.dtype == np.float32 and g.templates.dtype == np.float32
