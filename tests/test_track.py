"""The tracker's rules, each at its boundary: box overlap, association, when a track needs a look, when a
refused look is tried again, what is re-detected in its own crop, the fused look, and what a confirmation
carries. (K of M and the split at the floor are pinned in test_promises.py and test_units_service.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from edge.device.settings import TrackingSettings
from edge.recognition.track import FOLLOW_MISSED, NON_FACE_FOLLOW_FRAMES, Tracker, _resized, iou_matrix
from edge.types import Box, Face, Follow, Match


def face(x0: float, y0: float, x1: float, y1: float) -> Face:
    return Face(Box(x0, y0, x1, y1), np.zeros((6, 2), np.float32), 0.9)


def match(
    ident: str | None, ok: bool, score: float = 0.7, threshold: float = 0.5, condition: str = "colour", looks: int = 1
) -> Match:
    return Match(ident, ident, score, 0.3, threshold, 1e-6, ok, condition=condition, looks=looks)


def test_box_overlap_is_intersection_over_union_and_nothing_for_boxes_apart() -> None:
    a, b = Box(0, 0, 10, 10), Box(5, 0, 15, 10)
    assert iou_matrix([a], [b])[0, 0] == pytest.approx(50 / 150)
    tall, wide = Box(0, 0, 2, 8), Box(0, 0, 8, 2)  # areas 16 each, overlap 4
    assert iou_matrix([tall], [wide])[0, 0] == pytest.approx(4 / 28)
    apart_x, apart_y = Box(20, 0, 30, 10), Box(0, 20, 10, 30)
    diagonal = Box(20, 20, 30, 30)  # apart on both axes: negative widths times negative heights stay apart
    assert iou_matrix([a], [apart_x, apart_y, diagonal]).tolist() == [[0.0, 0.0, 0.0]]
    touching = Box(10, 0, 20, 10)  # sharing an edge: no overlap
    assert iou_matrix([a], [touching])[0, 0] == 0.0
    tiny = Box(0, 0, 0.5, 0.5)  # sub-pixel boxes overlap like any others
    assert iou_matrix([tiny], [tiny])[0, 0] == pytest.approx(1.0)
    assert iou_matrix([], [a]).shape == (0, 1) and iou_matrix([a], []).shape == (1, 0)


def test_a_box_is_another_detection_of_the_track_from_exactly_resized_times_its_size() -> None:
    assert _resized(Box(0, 0, 0.5, 0.5), Box(0, 0, 0.7, 0.7))  # 1.4 times: another detection
    assert not _resized(Box(0, 0, 0.5, 0.5), Box(0, 0, 0.69, 0.69))
    assert _resized(Box(0, 0, 70, 10), Box(0, 0, 10, 50))  # the larger side of each
    assert not _resized(Box(0, 0, 70, 10), Box(0, 0, 10, 60))


def test_faces_go_to_the_tracks_they_overlap_most_each_face_and_track_once() -> None:
    tr = Tracker(TrackingSettings(iou_threshold=0.3))
    (first, _), (second, _) = tr.update([face(0, 0, 10, 10), face(0, 1, 10, 11)], now=1.0)
    assert (first.id, second.id) == (1, 2) and (first.last_seen, first.first_seen) == (1.0, 1.0)
    # f1 overlaps the first track most (0.9) and the second well (0.73): taken by the first, the second
    # takes f2 (0.54) though the first overlaps f2 too (0.43).
    f1, f2 = face(0, 0, 10, 9), face(0, 4, 10, 14)
    pairs = tr.update([f1, f2], now=2.0)
    assert [(t.id, f) for t, f in pairs] == [(1, f1), (2, f2)] and len(tr.tracks) == 2
    assert first.box == f1.box and second.box == f2.box and first.face is f1 and first.last_seen == 2.0
    # One track, two faces near it: the better one continues it, the other begins a track of its own.
    solo = Tracker(TrackingSettings(iou_threshold=0.3))
    solo.update([face(0, 0, 10, 10)], now=0.0)
    near, also = face(0, 0, 10, 9), face(0, 3, 10, 13)
    pairs = solo.update([near, also], now=0.1)
    assert [(t.id, f) for t, f in pairs] == [(1, near), (2, also)]


def test_an_overlap_exactly_at_the_threshold_continues_the_track() -> None:
    tr = Tracker(TrackingSettings(iou_threshold=0.25))
    ((track, _),) = tr.update([face(0, 0, 10, 10)], now=0.0)
    at = face(0, 6, 10, 16)  # overlap 40, union 160: exactly 0.25
    assert iou_matrix([track.box], [at.box])[0, 0] == 0.25
    ((again, _),) = tr.update([at], now=0.1)
    assert again is track
    below = face(0, 12.1, 10, 22.1)  # just under: a new track
    ((other, _),) = tr.update([below], now=0.2)
    assert other is not track


def test_a_track_seen_again_is_not_missing_and_counts_the_frames_its_face_was_held() -> None:
    tr = Tracker(TrackingSettings(max_missed_frames=5))
    f = face(0, 0, 10, 10)
    ((track, _),) = tr.update([f], now=0.0)
    tr.update([], now=0.1)
    tr.update([], now=0.2)
    assert track.missed == 2 and track.age == 2
    tr.update([f], now=0.3)  # the same face object: kept there since nothing changed
    assert track.missed == 0 and track.unchanged_frames == 1 and track.face is f
    tr.update([f], now=0.4)
    assert track.unchanged_frames == 2
    other = face(0, 0, 10, 10)
    tr.update([other], now=0.5)  # found anew: held starts again
    assert track.unchanged_frames == 0 and track.face is other
    still = Tracker(TrackingSettings(confirm_m=5))
    ((photo, _),) = still.update([f], now=0.0, still=True)
    ((video, _),) = still.update([face(100, 100, 110, 110)], now=0.0)
    assert photo.votes.maxlen == 1 and video.votes.maxlen == 5 and photo.still and not video.still


def test_a_new_box_much_larger_or_smaller_forgets_that_the_old_was_not_a_face() -> None:
    tr = Tracker(TrackingSettings(iou_threshold=0.1, stranger_recheck_s=5.0))
    ((track, _),) = tr.update([face(0, 0, 10, 10)], now=0.0)
    tr.defer(track, 1.0, not_a_face=True)
    assert track.non_face and track.retry_at == 2.0
    tr.update([face(0, 0, 13.9, 13.9)], now=1.1)  # less than 1.4 times: the same detection
    assert track.non_face and track.retry_at == 2.0
    tr.update([face(0, 0, 19.46, 19.46)], now=1.2)  # 1.4 times the last: another detection of it
    assert not track.non_face and track.retry_at == float("-inf")


def test_when_a_track_needs_a_look_each_interval_at_its_boundary() -> None:
    """Times are exact binary fractions, so each boundary is met exactly."""
    p = TrackingSettings(
        confirm_k=2,
        confirm_m=3,
        recheck_s=2.0,
        stranger_recheck_s=2.0,
        undecided_recheck_s=1.0,
        undecided_margin=0.25,
        undecided_eager_s=0.75,
    )
    tr = Tracker(p)
    ((track, f),) = tr.update([face(0, 0, 10, 10)], now=10.0)
    for t in (10.0, 10.25, 10.5):  # a clear stranger: under the threshold less the margin
        assert tr.needs_evidence(track, t)  # its window is not full yet
        tr.add_evidence(track, match("x", False, score=0.2), 0.9, f.box, t)
    assert not tr.needs_evidence(track, 10.5625)  # within undecided_eager_s, but not undecided
    assert not tr.needs_evidence(track, 12.4375) and tr.needs_evidence(track, 12.5)  # stranger_recheck_s
    # Exactly threshold - margin is undecided: every frame for undecided_eager_s from the track's start,
    # then every undecided_recheck_s.
    tr2 = Tracker(p)
    ((near, f),) = tr2.update([face(0, 0, 10, 10)], now=10.0)
    for t in (10.0, 10.25, 10.5):
        tr2.add_evidence(near, match("x", False, score=0.25, threshold=0.5), 0.9, f.box, t)
    assert tr2.needs_evidence(near, 10.7421875) and not tr2.needs_evidence(near, 10.75)
    assert not tr2.needs_evidence(near, 11.4375) and tr2.needs_evidence(near, 11.5)
    # A confirmed track: exactly recheck_s after its last look.
    tr3 = Tracker(p)
    ((conf, f),) = tr3.update([face(0, 0, 10, 10)], now=20.0)
    tr3.add_evidence(conf, match("alice", True), 0.9, f.box, 20.0)
    tr3.add_evidence(conf, match("alice", True), 0.9, f.box, 20.5)
    assert conf.confirmed
    assert not tr3.needs_evidence(conf, 22.4375) and tr3.needs_evidence(conf, 22.5)
    # A still photo's track, one look in its window of one: no more looks needed.
    tr4 = Tracker(p)
    ((photo, f),) = tr4.update([face(0, 0, 10, 10)], now=30.0, still=True)
    assert tr4.needs_evidence(photo, 30.0)
    tr4.add_evidence(photo, match("bob", False, score=0.1), 0.9, f.box, 30.0)
    assert not tr4.needs_evidence(photo, 30.0625)
    # Deferred: nothing before retry_at.
    tr4.defer(photo, 31.0)
    assert photo.retry_at == 31.0 + 2.0 / 5 and not tr4.needs_evidence(photo, 31.375)


def test_undecided_looks_every_frame_only_within_eager_seconds_of_the_tracks_start() -> None:
    p = TrackingSettings(
        confirm_k=3,
        confirm_m=3,
        undecided_recheck_s=10.0,
        stranger_recheck_s=20.0,
        undecided_margin=0.25,
        undecided_eager_s=0.5,
    )
    tr = Tracker(p)
    ((track, f),) = tr.update([face(0, 0, 10, 10)], now=100.0)
    for t in (100.0, 100.125, 100.25):
        tr.add_evidence(track, match("x", False, score=0.25, threshold=0.5), 0.9, f.box, t)
    assert tr.needs_evidence(track, 100.4375)  # eager: every frame
    assert not tr.needs_evidence(track, 100.5)  # eager time over: next look at last + undecided_recheck_s
    assert not tr.needs_evidence(track, 110.125) and tr.needs_evidence(track, 110.25)
    under = Tracker(p)  # one float under threshold - margin: a stranger
    ((s, f),) = under.update([face(0, 0, 10, 10)], now=100.0)
    for t in (100.0, 100.125, 100.25):
        under.add_evidence(s, match("x", False, score=float(np.nextafter(0.25, 0)), threshold=0.5), 0.9, f.box, t)
    assert not under.needs_evidence(s, 100.4375)
    assert not under.needs_evidence(s, 110.25) and under.needs_evidence(s, 120.25)


def test_a_refused_look_is_tried_next_frame_only_within_eager_seconds_and_never_for_a_non_face() -> None:
    p = TrackingSettings(stranger_recheck_s=1.0, undecided_eager_s=0.5)
    tr = Tracker(p)
    ((track, _),) = tr.update([face(0, 0, 10, 10)], now=100.0)
    tr.defer(track, 100.49)
    assert track.retry_at == 100.49 and not track.non_face
    tr.defer(track, 100.5)  # exactly eager seconds after its start: no longer eager
    assert track.retry_at == 100.5 + 0.2
    tr.defer(track, 100.1, not_a_face=True)
    assert track.retry_at == pytest.approx(100.3) and track.non_face


def test_what_is_re_detected_in_its_own_crop_and_what_it_offers_the_scanner() -> None:
    p = TrackingSettings(max_missed_frames=100, recheck_s=2.0, confirm_k=1, confirm_m=1)
    tr = Tracker(p)
    f = face(0, 0, 10, 10)
    ((track, _),) = tr.update([f], now=0.0)
    assert tr.followed(0.0) == [Follow(f.box, None, 0, 0, False)]  # needs a look; no look passed yet
    tr.add_evidence(track, match("alice", True), 0.9, f.box, 0.0)
    tr.update([f], now=0.1)
    assert tr.followed(0.1) == [Follow(f.box, f, 1, 0, True)]  # seen, needs nothing: offered as still
    assert tr.followed(2.0) == [Follow(f.box, None, 1, 0, True)]  # recheck due: not offered
    kept = []
    for n in range(1, 10):
        tr.update([], now=0.1 + n)
        follows = tr.followed(0.1 + n)
        assert track.missed == n
        if follows:
            assert follows == [Follow(f.box, None, 1, n, True)]  # lost: no still face
            kept.append(n)
    assert kept == [n for n in range(1, 10) if n <= FOLLOW_MISSED or n % FOLLOW_MISSED == 0]
    # Called "not a face": followed only every FOLLOW_MISSED-th frame of its first NON_FACE_FOLLOW_FRAMES.
    nf = Tracker(p)
    ((junk, _),) = nf.update([f], now=0.0)
    nf.defer(junk, 0.0, not_a_face=True)
    ages = []
    for n in range(1, NON_FACE_FOLLOW_FRAMES + 5):
        nf.update([f], now=n * 0.1)
        if nf.followed(n * 0.1):
            ages.append(junk.age)
            assert not nf.followed(n * 0.1)[0].face  # a non-face explains no motion
    assert ages == [a for a in range(1, NON_FACE_FOLLOW_FRAMES + 5) if a < NON_FACE_FOLLOW_FRAMES and a % 3 == 0]


def test_a_look_records_its_box_and_clears_not_a_face_and_a_confirmation_carries_the_best_look() -> None:
    tr = Tracker(TrackingSettings(confirm_k=2, confirm_m=3, cooldown_s=10.0))
    ((track, _),) = tr.update([face(0, 0, 10, 10)], now=5.0)
    tr.defer(track, 5.0, not_a_face=True)
    b1, b2 = Box(1, 1, 11, 11), Box(2, 2, 12, 12)
    assert tr.add_evidence(track, match("alice", True, score=0.8), 0.6, b1, 5.1) is None
    assert track.non_face is False and track.votes[-1].box == b1 and track.last_embed == 5.1
    conf = tr.add_evidence(track, match("alice", True, score=0.7), 0.9, b2, 5.2)
    assert conf is not None
    assert (
        conf.track_id,
        conf.match.score,
        conf.quality,
        conf.box,
        conf.agreed,
        conf.seen,
        conf.first_seen,
        conf.fused,
    ) == (1, 0.8, 0.6, b2, 2, 2, 5.0, 0)
    # A refused look, a look naming nobody, an identity already reported: no confirmation.
    assert tr.add_evidence(track, match("alice", True), 0.9, b2, 5.3) is None
    other = Tracker(TrackingSettings(confirm_k=1, confirm_m=1))
    ((t2, _),) = other.update([face(0, 0, 10, 10)], now=0.0)
    assert other.add_evidence(t2, match(None, True), 0.9, b1, 0.1) is None
    assert other.add_evidence(t2, match("bob", False), 0.9, b1, 0.2) is None
    assert other.add_evidence(t2, match("bob", True), 0.9, b1, 0.3) is not None


def test_the_cooldown_holds_until_exactly_cooldown_seconds_after_the_last_event() -> None:
    tr = Tracker(TrackingSettings(confirm_k=1, confirm_m=1, cooldown_s=10.0))
    ((a, _),) = tr.update([face(0, 0, 10, 10)], now=100.0)
    assert tr.add_evidence(a, match("alice", True), 0.9, a.box, 100.0) is not None
    tr.new_scene()
    ((b, _),) = tr.update([face(0, 0, 10, 10)], now=109.99)
    assert tr.add_evidence(b, match("alice", True), 0.9, b.box, 109.99) is None
    tr.new_scene()
    ((c, _),) = tr.update([face(0, 0, 10, 10)], now=110.0)
    assert tr.add_evidence(c, match("alice", True), 0.9, c.box, 110.0) is not None


def test_the_fused_look_needs_enough_looks_and_takes_the_condition_of_half_of_them() -> None:
    e = np.eye(4, dtype=np.float32)
    tr = Tracker(TrackingSettings(confirm_k=2, confirm_m=4))
    ((track, _),) = tr.update([face(0, 0, 10, 10)], now=0.0)
    tr.add_evidence(track, match("alice", False, condition="grey"), 0.9, track.box, 0.0, e[0] * 3, 50.0)
    assert tr.fused(track) is None  # one look
    tr.add_evidence(track, match("alice", False), 0.9, track.box, 0.1, e[1] * 3, 40.0)
    fused = tr.fused(track)
    assert fused is not None and fused.looks == 2 and fused.face_px == 40.0
    assert fused.condition == "grey"  # one of two grey: half is enough
    assert fused.embedding.dtype == np.float32
    np.testing.assert_allclose(fused.embedding, (e[0] + e[1]) / np.sqrt(2), rtol=1e-6)  # the mean, unit length
    tr.add_evidence(track, match("alice", False), 0.9, track.box, 0.2, e[1] * 3, 45.0)
    third = tr.fused(track)
    assert third is not None and third.condition == "colour"  # one of three grey
    one = Tracker(TrackingSettings(confirm_k=1, confirm_m=4))  # K of 1 still fuses two looks at the least
    ((t1, _),) = one.update([face(0, 0, 10, 10)], now=0.0)
    one.add_evidence(t1, match("bob", False), 0.9, t1.box, 0.0, e[0], 50.0)
    assert one.fused(t1) is None
    one.add_evidence(t1, match("bob", False), 0.9, t1.box, 0.1, e[0], 50.0)
    assert one.fused(t1) is not None
    tiny = Tracker(TrackingSettings(confirm_k=2, confirm_m=2))  # near-zero mean: kept finite
    ((t3, _),) = tiny.update([face(0, 0, 10, 10)], now=0.0)
    for v in (e[0] * 1e-13, e[0] * 1e-13):
        tiny.add_evidence(t3, match("c", False), 0.9, t3.box, 0.0, v, 50.0)
    small = tiny.fused(t3)
    assert small is not None and float(small.embedding[0]) == pytest.approx(0.1, rel=1e-5)


def test_a_fused_match_confirms_with_the_best_quality_of_the_looks_naming_it() -> None:
    tr = Tracker(TrackingSettings(confirm_k=2, confirm_m=4))
    ((track, _),) = tr.update([face(0, 0, 10, 10)], now=1.0)
    v = np.eye(4, dtype=np.float32)[0]
    tr.add_evidence(track, match("alice", False), 0.6, track.box, 1.1, v, 50.0)
    tr.add_evidence(track, match("alice", False), 0.8, track.box, 1.2, v, 50.0)
    assert tr.add_fused(track, match(None, True, looks=2), 1.3) is None
    assert tr.add_fused(track, match("alice", False, looks=2), 1.3) is None
    conf = tr.add_fused(track, match("alice", True, score=0.66, looks=2), 1.3)
    assert conf is not None
    assert (
        conf.track_id,
        conf.match.score,
        conf.quality,
        conf.box,
        conf.agreed,
        conf.seen,
        conf.first_seen,
        conf.fused,
    ) == (1, 0.66, 0.8, track.box, 2, 2, 1.0, 2)
    assert tr._last_event["alice"] == 1.3  # its cooldown runs from this moment
    again = Tracker(TrackingSettings(confirm_k=2, confirm_m=4, cooldown_s=0.0))  # no cooldown to hide a repeat
    ((t2, _),) = again.update([face(0, 0, 10, 10)], now=0.0)
    for t in (0.1, 0.2):
        again.add_evidence(t2, match("alice", False), 0.8, t2.box, t, v, 50.0)
    assert again.add_fused(t2, match("alice", True, looks=2), 0.3) is not None
    assert again.add_fused(t2, match("alice", True, looks=2), 0.4) is None  # reported: once per track


def test_a_look_exactly_at_the_split_floor_stays_and_a_split_replaces_only_its_own_track() -> None:
    e = np.eye(4, dtype=np.float32)
    at = e[0] * np.float32(0.6) + e[1] * np.float32(0.8)  # float32: its cosine with e0 is float32(0.6)
    floor = float(np.float32(0.6))
    tr = Tracker(TrackingSettings(confirm_k=3, confirm_m=5), split_below=floor)
    (a, _), (b, _) = tr.update([face(0, 0, 10, 10), face(100, 0, 110, 10)], now=0.0, still=True)
    for t in (a, b):
        tr.add_evidence(t, match("x", False), 0.9, t.box, 0.0, e[0])
    assert float(at @ e[0]) == floor and tr.same_person(a, at, 0.1) is a and tr.splits == 0
    new_a = tr.same_person(a, e[2], 0.2)
    assert tr.tracks == [new_a, b] and new_a.still and tr.splits == 1
    new_b = tr.same_person(b, e[3], 0.3)
    assert tr.tracks == [new_a, new_b] and tr.splits == 2
