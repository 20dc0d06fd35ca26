"""Fast unit tests of the service's parts: outbox, tracker, hand-off, sd_notify, payloads."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.capture.reader import LatestFrame
from edge.delivery.events import Evidence, MatchEvent, Status, make_event
from edge.delivery.outbox import Outbox
from edge.device.health import SystemdNotifier
from edge.device.settings import TrackingSettings
from edge.recognition.track import Tracker
from edge.types import Box, Face, Frame, Match


def test_outbox_is_durable_ordered_and_acked(tmp_path: Path) -> None:
    db = tmp_path / "o.sqlite"
    box = Outbox(db)
    seqs = [box.put("t", f"e{i}".encode()) for i in range(5)]
    box.ack(seqs[1])
    box.close()
    again = Outbox(db)  # a restart: nothing committed is lost
    assert [p.payload for p in again.pending()] == [b"e0", b"e2", b"e3", b"e4"]
    assert [p.payload for p in again.pending(after=seqs[2], limit=1)] == [b"e3"]
    assert again.depth() == 4


def test_outbox_bounds_drop_oldest_and_count(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_events=3, max_age_s=100)
    for i in range(5):
        box.put("t", str(i).encode(), now=1000.0 + i)
    assert [p.payload for p in box.pending()] == [b"2", b"3", b"4"]
    box.put("t", b"late", now=1200.0)  # the others are now older than 100 s
    assert [p.payload for p in box.pending()] == [b"late"] and box.dropped() == 5


def test_corrupt_outbox_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "o.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Exception, match=r"outbox .*o\.sqlite cannot be opened"):
        Outbox(db)
    assert db.read_bytes().startswith(b"this is not a database")  # left as it was


def _face(x: float) -> Face:
    return Face(Box(x, 100, x + 100, 200), np.zeros((6, 2), np.float32), 0.9)


def _match(ident: str | None, ok: bool, score: float = 0.7) -> Match:
    return Match(ident, ident, score, 0.3, 0.5, 1e-6, ok)


def test_tracker_confirms_k_of_m_once_per_track_and_cools_down() -> None:
    tr = Tracker(TrackingSettings(confirm_k=3, confirm_m=5, cooldown_s=10))
    events = []
    for i, ok in enumerate([True, False, True, True, True, True]):
        ((track, face),) = tr.update([_face(10 + i)], now=i * 0.03)
        if tr.needs_evidence(track, i * 0.03):  # until confirmed, every frame
            conf = tr.add_evidence(track, _match("alice", ok), 0.9, face.box, i * 0.03)
            events += [conf] if conf else []
    assert len(events) == 1 and events[0].agreed == 3 and events[0].seen == 4
    assert track.confirmed and not tr.needs_evidence(track, 0.2)  # re-check only after recheck_s
    # The face leaves and comes back as a new track within the cooldown: no second event.
    for k in range(20):
        tr.update([], now=1 + k * 0.03)
    ((track2, face2),) = tr.update([_face(300)], now=2.0)
    assert track2.id != track.id
    for j in range(3):
        assert tr.add_evidence(track2, _match("alice", True), 0.9, face2.box, 2.0 + j) is None


def test_tracker_never_confirms_a_stranger_and_backs_off() -> None:
    tr = Tracker(TrackingSettings(confirm_k=3, confirm_m=5, stranger_recheck_s=0.5))
    for i in range(5):
        ((track, face),) = tr.update([_face(50)], now=i * 0.03)
        assert tr.add_evidence(track, _match("bob", False, 0.3), 0.9, face.box, i * 0.03) is None
    assert not tr.needs_evidence(track, 0.2) and tr.needs_evidence(track, 0.7)


def test_an_unconfirmed_face_scoring_near_its_threshold_is_looked_at_more_often_than_a_clear_stranger() -> None:
    tr = Tracker(
        TrackingSettings(
            confirm_k=3, confirm_m=5, stranger_recheck_s=0.5, undecided_recheck_s=0.2, undecided_eager_s=0.0
        )
    )
    for i in range(5):
        t = i * 0.03
        ((near, fa), (clear, fb)) = tr.update([_face(50), _face(400)], now=t)
        # Threshold 0.5: 0.45 is within undecided_margin (0.1) below it, 0.3 a clear stranger.
        tr.add_evidence(near, _match("carol", False, 0.45), 0.9, fa.box, t)
        tr.add_evidence(clear, _match("dave", False, 0.3), 0.9, fb.box, t)
    last = 4 * 0.03
    assert not tr.needs_evidence(near, last + 0.15) and tr.needs_evidence(near, last + 0.21)
    assert not tr.needs_evidence(clear, last + 0.21) and tr.needs_evidence(clear, last + 0.51)


def test_a_face_near_its_threshold_is_looked_at_every_frame_for_its_first_undecided_eager_s() -> None:
    tr = Tracker(TrackingSettings(confirm_k=3, confirm_m=5, undecided_recheck_s=0.2, undecided_eager_s=0.3))
    looked = {"near": 0, "clear": 0}
    for i in range(12):  # 0.4 s at 30 frames/s
        t = i / 30
        ((near, fa), (clear, fb)) = tr.update([_face(50), _face(400)], now=t)
        if tr.needs_evidence(near, t):
            looked["near"] += 1
            tr.add_evidence(near, _match("carol", False, 0.45), 0.9, fa.box, t)  # threshold 0.5: near
        if tr.needs_evidence(clear, t):
            looked["clear"] += 1
            tr.add_evidence(clear, _match("dave", False, 0.3), 0.9, fb.box, t)  # a clear stranger
    # Every frame while under 0.3 s old (frames 0-8), then the 0.2 s re-check: none due by 0.37 s.
    assert looked == {"near": 9, "clear": 5}
    assert not near.confirmed and tr.needs_evidence(near, 8 / 30 + 0.21)


def test_latest_frame_drops_the_stalest_and_counts() -> None:
    slot, stop = LatestFrame(), threading.Event()
    img = np.zeros((8, 8, 3), np.uint8)
    for i in range(5):
        slot.put(Frame(img, i, float(i)), wait_until_taken=False, stop=stop)
    got = slot.take(0.1)
    assert got is not None and got.seq == 4 and slot.dropped == 4
    assert slot.take(0.01) is None


def test_sd_notify_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(path))
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    n.ready("ok")
    n.watchdog(100.0)
    n.watchdog(100.1)  # within half the watchdog interval: not sent again
    n.stopping()
    srv.settimeout(1)
    msgs = [srv.recv(100).decode() for _ in range(3)]
    srv.close()
    assert msgs == ["READY=1\nSTATUS=ok", "WATCHDOG=1", "STOPPING=1"]
    assert not SystemdNotifier({}).notify("READY=1")


def test_match_event_payload_has_no_image_or_embedding() -> None:
    ev = MatchEvent(
        device_id="d",
        identity_id="alice",
        label=None,
        score=0.8,
        threshold=0.5,
        est_false_match_rate=1e-7,
        evidence=Evidence(agreed=3, seen=4),
        track_id=1,
        bbox=(0.1, 0.1, 0.2, 0.2),
        quality=0.9,
        model="ab",
        gallery_version=2,
    )

    data = json.loads(ev.to_json())
    assert data["schema"] == 1 and "label" not in data
    # The contract other tools rely on (README, MQTT contract): exactly these fields.
    assert set(data) == {
        "schema",
        "event_id",
        "device_id",
        "camera",
        "ts",
        "identity_id",
        "score",
        "threshold",
        "est_false_match_rate",
        "evidence",
        "track_id",
        "bbox",
        "quality",
        "model",
        "gallery_version",
    }
    with pytest.raises(Exception, match="Extra inputs"):
        MatchEvent(**{**ev.model_dump(by_alias=True), "embedding": [0.1]})
    assert json.loads(Status(device_id="d", state="offline").to_json())["state"] == "offline"


def test_outbox_write_failure_is_one_clear_error_and_keeps_what_was_stored(tmp_path: Path) -> None:
    from edge.errors import EdgeError

    box = Outbox(tmp_path / "o.sqlite")
    box.put("t", b"kept")
    box._db.execute("PRAGMA query_only = ON")  # the next write fails as on a read-only or full disk
    with pytest.raises(EdgeError, match=r"o\.sqlite: event not stored"):
        box.put("t", b"lost")
    box._db.execute("PRAGMA query_only = OFF")
    assert [p.payload for p in box.pending()] == [b"kept"]


def test_stats_windows_roll_on_their_own_clock_and_reading_them_changes_nothing() -> None:
    from edge.device.health import Stats

    now = [0.0]
    stats = Stats(window=50, period_s=10.0, clock=lambda: now[0])
    for _ in range(50):
        stats.count(2)
        stats.add("frame", 0.004)
    under_way = stats.window_at(5.0)  # no whole window yet: the one under way, over its 5 s
    assert (under_way.fps, under_way.faces_per_min, under_way.since, under_way.until) == (10.0, 1200.0, 0.0, 5.0)
    assert stats.window_at(5.0) == under_way and stats.snapshot(5.0) == (10.0, 1200.0, under_way.latency)
    now[0] = 9.999
    stats.count(0)  # not yet 10 s old: the same window
    assert stats.window_at(9.999).fps == round(51 / 9.999, 2)
    now[0] = 10.0
    stats.count(1)  # exactly 10 s: the first window is whole (51 frames) and the next begins with this one
    whole = stats.window_at(12.0)
    assert (whole.fps, whole.since, whole.until) == (5.1, 0.0, 10.0) and whole.latency["frame"].p50_ms == 4.0
    assert stats.window_at(19.0) == whole  # read again later: the same, nothing reset by reading
    nxt = stats.window_at(20.0)  # the clock rolled it: one frame in 10 s, no latency sample
    assert (nxt.fps, nxt.since, nxt.until, nxt.latency) == (0.1, 10.0, 20.0, {})


def test_stats_read_from_another_thread_lose_and_double_nothing() -> None:
    """The frame loop counts while the MQTT thread reads a status: every whole window has exactly the frames
    counted in it (the clock moves one second per 1,000 frames)."""
    from edge.device.health import Stats

    clock = [0.0]
    stats = Stats(window=50, period_s=1.0, clock=lambda: clock[0])
    done = threading.Event()

    def loop() -> None:
        for second in range(20):
            clock[0] = float(second)
            for _ in range(1000):
                stats.count(1)
                stats.add("frame", 0.001)
        clock[0] = 20.0
        stats.count(0)
        done.set()

    seen = set()
    worker = threading.Thread(target=loop)
    worker.start()
    while not done.is_set():
        w = stats.window_at(clock[0])
        if w.until - w.since == 1.0:  # a whole window
            assert w.fps == 1000.0, w
            seen.add(w.since)
        assert set(w.latency) <= {"frame"}
    worker.join()
    final = stats.window_at(20.0)
    assert (final.since, final.until, final.fps) == (19.0, 20.0, 1000.0) and seen <= set(map(float, range(20)))


def test_include_label_false_keeps_the_label_out_of_the_event() -> None:
    from edge.recognition.track import Confirmation

    m = Match("alice", "Alice Smith", 0.81, 0.3, 0.55, 2e-7, True, gallery_version=7, band="80+ px")
    conf = Confirmation(3, m, 0.9, Box(64, 48, 192, 176), 3, 4, 0.0)
    with_label = json.loads(make_event(conf, 640, 480, "cam", "abcd", include_label=True).to_json(True))
    without = json.loads(make_event(conf, 640, 480, "cam", "abcd", include_label=False).to_json(False))
    assert with_label["label"] == "Alice Smith" and "label" not in without
    assert without["identity_id"] == "alice" and without["gallery_version"] == 7  # the matching snapshot's
    assert without["bbox"] == [0.1, 0.1, 0.3, 0.3667] and without["evidence"] == {"agreed": 3, "seen": 4, "fused": 0}


def test_a_track_ends_after_max_missed_frames() -> None:
    tr = Tracker(TrackingSettings(max_missed_frames=3))
    ((track, _),) = tr.update([_face(10)], now=0.0)
    for k in range(3):
        tr.update([], now=(k + 1) * 0.03)
        assert tr.tracks == [track]
    tr.update([], now=0.15)
    assert tr.tracks == []
    ((again, _),) = tr.update([_face(10)], now=0.2)
    assert again.id != track.id  # a new track: its evidence starts over


def test_a_track_missed_a_while_is_re_detected_in_its_crop_less_often_until_it_ends() -> None:
    from edge.recognition.track import FOLLOW_MISSED

    tr = Tracker(TrackingSettings(max_missed_frames=15))
    ((track, _),) = tr.update([_face(10)], now=0.0)
    followed = []
    for k in range(15):
        followed.append([f.box for f in tr.followed(k * 0.03)] == [track.box])
        tr.update([], now=(k + 1) * 0.03)
    assert followed[: FOLLOW_MISSED + 1] == [True] * (FOLLOW_MISSED + 1)  # every frame at first
    later = followed[FOLLOW_MISSED + 1 :]
    assert 0 < sum(later) <= len(later) // FOLLOW_MISSED + 1  # then every FOLLOW_MISSED-th frame
    assert tr.tracks == [track]  # the track lives on, to take its face back
    ((again, _),) = tr.update([_face(10)], now=0.5)
    assert again is track and [f.box for f in tr.followed(0.5)] == [track.box]


def test_a_track_the_face_mesh_called_no_face_is_followed_in_its_first_frames_only_until_a_look_finds_a_face() -> None:
    from edge.recognition.track import FOLLOW_MISSED, NON_FACE_FOLLOW_FRAMES

    tr = Tracker(TrackingSettings(stranger_recheck_s=0.5, max_missed_frames=100))
    ((track, _),) = tr.update([_face(10)], now=0.0)  # a loose box from a coarse window: "not a face"
    tr.defer(track, 0.0, not_a_face=True)
    followed = []
    for i in range(1, 3 * NON_FACE_FOLLOW_FRAMES):
        ((same, _),) = tr.update([_face(10 + i % 2)], now=i / 30)  # the tiles find the same box again
        assert same is track
        followed.append(bool(tr.followed(i / 30)))
    # Its crop is looked at every FOLLOW_MISSED-th frame while it is new (a far face inside a loose box
    # is resolved there), then left alone: clutter costs nothing for good.
    expected = [i < NON_FACE_FOLLOW_FRAMES and i % FOLLOW_MISSED == 0 for i in range(1, 3 * NON_FACE_FOLLOW_FRAMES)]
    assert followed == expected and any(followed)
    assert not tr.needs_evidence(track, 1 / 30)  # its next look waits a little
    tr.defer(track, 0.1, not_a_face=False)  # a face this time, head turned: followed every frame
    assert [f.box for f in tr.followed(0.13)] == [track.box]
    tr.defer(track, 0.2, not_a_face=True)
    assert tr.followed(0.23) == []
    tr.add_evidence(track, _match(None, False, 0.2), 1.0, track.box, 0.3)  # it passed the quality gate
    assert [f.box for f in tr.followed(0.33)] == [track.box]


def test_a_track_that_takes_a_much_tighter_box_forgets_what_was_said_of_the_loose_one() -> None:
    tr = Tracker(TrackingSettings(stranger_recheck_s=0.5))
    loose = Face(Box(100, 100, 180, 180), np.zeros((6, 2), np.float32), 0.6)
    ((track, _),) = tr.update([loose], now=0.0)
    tr.defer(track, 0.0, not_a_face=True)
    assert track.non_face and not tr.needs_evidence(track, 1 / 30)
    tight = Face(Box(120, 120, 165, 165), np.zeros((6, 2), np.float32), 0.9)  # the face its crop resolved
    ((same, _),) = tr.update([tight], now=1 / 30)
    assert same is track and not track.non_face and tr.needs_evidence(track, 1 / 30)  # looked at now
    nearly = Face(Box(121, 121, 167, 167), np.zeros((6, 2), np.float32), 0.9)
    tr.defer(track, 1 / 30, not_a_face=True)
    ((same, _),) = tr.update([nearly], now=2 / 30)  # about the same box: the verdict stands
    assert same is track and track.non_face and not tr.needs_evidence(track, 2 / 30)


def test_a_new_face_the_quality_gate_refused_is_looked_at_again_next_frame_for_undecided_eager_s() -> None:
    tr = Tracker(TrackingSettings(undecided_eager_s=0.3, stranger_recheck_s=0.5))
    ((track, _),) = tr.update([_face(10)], now=0.0)
    tr.defer(track, 0.0)  # head turned just past the limit
    assert tr.needs_evidence(track, 1 / 30)  # the next frame may pass: look again
    tr.defer(track, 0.2)
    assert tr.needs_evidence(track, 0.2 + 1 / 30)
    tr.defer(track, 0.4)  # past its first 0.3 s: a little later, not every frame
    assert not tr.needs_evidence(track, 0.4 + 1 / 30) and tr.needs_evidence(track, 0.5)
    ((other, _),) = tr.update([_face(10), _face(400)], now=0.5)[1:]
    tr.defer(other, 0.5, not_a_face=True)  # not a face: never eager
    assert not tr.needs_evidence(other, 0.5 + 1 / 30)


def test_a_tracks_fused_look_confirms_only_when_k_of_its_looks_name_the_identity() -> None:
    tr = Tracker(TrackingSettings(confirm_k=3, confirm_m=5))
    ((track, _),) = tr.update([_face(10)], now=0.0)
    vec = np.zeros(8, np.float32)
    vec[0] = 1.0
    # Three looks that name alice as their best match, none above the one-look threshold.
    for i, ident in enumerate(["alice", "bob", "alice"]):
        assert tr.add_evidence(track, _match(ident, False, 0.45), 0.8, track.box, i * 0.03, vec, 60.0 - i) is None
    assert tr.fused(track) is None  # only two name alice
    assert tr.add_evidence(track, _match("alice", False, 0.47), 0.9, track.box, 0.09, vec, 40.0) is None
    fused = tr.fused(track)
    assert fused is not None and fused.looks == 4 and fused.face_px == 40.0 and fused.condition == "colour"
    assert np.allclose(fused.embedding, vec)
    assert tr.add_fused(track, _match("bob", True, 0.7), 0.1) is None  # accepted, but only one look names bob
    conf = tr.add_fused(track, Match("alice", "alice", 0.72, 0.2, 0.7, 1e-7, True, looks=4), 0.1)
    assert conf is not None and conf.fused == 4 and conf.agreed == 3 and conf.seen == 4
    assert tr.fused(track) is None  # reported: nothing left to fuse for
    assert (
        tr.add_fused(track, Match("alice", "alice", 0.75, 0.2, 0.7, 1e-7, True, looks=5), 0.2) is None
    )  # once per track


def test_a_still_photo_is_a_scene_of_its_own_confirmed_by_one_accepted_look() -> None:
    tr = Tracker(TrackingSettings(confirm_k=3, confirm_m=5, cooldown_s=10))
    ((first, face),) = tr.update([_face(10)], now=0.0, still=True)
    assert tr.needs_evidence(first, 0.0)
    conf = tr.add_evidence(first, _match("alice", True), 0.9, face.box, 0.0)
    assert conf is not None and conf.agreed == 1 and conf.seen == 1  # one photo, one look
    assert not tr.needs_evidence(first, 0.01)
    tr.new_scene()  # the next photo: the same spot, another scene
    ((second, face2),) = tr.update([_face(10)], now=0.03, still=True)
    assert second.id != first.id and tr.tracks == [second]
    assert tr.add_evidence(second, _match("bob", False), 0.9, face2.box, 0.03) is None  # refused look: nothing
    tr.new_scene()
    ((third, face3),) = tr.update([_face(10)], now=0.06, still=True)
    assert tr.add_evidence(third, _match("alice", True), 0.9, face3.box, 0.06) is None  # alice's cooldown holds
    # A video frame's track still needs K of M.
    ((video, face4),) = tr.update([_face(300)], now=0.1)
    assert tr.add_evidence(video, _match("carol", True), 0.9, face4.box, 0.1) is None


def test_a_look_of_someone_else_in_the_same_spot_begins_a_new_track() -> None:
    """Two people swap places without a gap: the box never jumps, but the look does. A look less like the
    track's earlier looks than the embedder's measured floor ends the track; the next person's own looks
    then confirm them promptly (their K of M starts afresh), and alice's report stands."""
    tr = Tracker(TrackingSettings(confirm_k=3, confirm_m=5, recheck_s=2.0), split_below=0.4)
    alice, bob = np.eye(8, dtype=np.float32)[0], np.eye(8, dtype=np.float32)[1]
    near_alice = (alice * 0.9 + bob * 0.1) / np.linalg.norm(alice * 0.9 + bob * 0.1)
    events = []
    t = 0.0
    for who, vec in [("alice", alice)] * 3 + [("alice", near_alice)] + [("bob", bob)] * 3:
        ((track, face),) = tr.update([_face(10)], now=t)
        track = tr.same_person(track, vec, t)
        conf = tr.add_evidence(track, _match(who, True), 0.9, face.box, t, vec)
        events += [(conf.match.identity_id, conf.track_id)] if conf else []
        t += 2.0  # every look a recheck of a confirmed track
    assert [e[0] for e in events] == ["alice", "bob"] and events[0][1] != events[1][1]
    assert tr.splits == 1 and len(tr.tracks) == 1
    # Without a measured floor (an embedder never calibrated for it) nothing splits.
    plain = Tracker(TrackingSettings(), split_below=None)
    ((track, _),) = plain.update([_face(10)], now=0.0)
    plain.add_evidence(track, _match("alice", True), 0.9, track.box, 0.0, alice)
    assert plain.same_person(track, bob, 0.1) is track


def test_the_split_compares_with_the_mean_of_earlier_looks_at_exactly_the_floor() -> None:
    """A look scoring exactly the floor against the mean of the track's earlier looks stays (the floor is
    'below it: someone else'); the next float below splits; the new track keeps the box, the face, the window
    size and the still flag, starts empty, and the old one is gone from the tracker."""
    e = np.eye(8, dtype=np.float32)
    tr = Tracker(TrackingSettings(confirm_k=3, confirm_m=5), split_below=0.6)
    ((track, face),) = tr.update([_face(10)], now=0.0)
    for vec in (e[0], e[1]):  # earlier looks: their mean points between e0 and e1, length 1/sqrt(2)
        tr.add_evidence(track, _match("alice", False, 0.4), 0.9, face.box, 0.0, vec)
    mean = (e[0] + e[1]) / 2
    unit_mean = mean / np.linalg.norm(mean)
    at_floor = (0.6 * unit_mean + np.sqrt(1 - 0.36) * e[2]).astype(np.float32)  # cosine 0.6 with the mean
    assert abs(float(at_floor @ mean) / float(np.linalg.norm(mean)) - 0.6) < 1e-6
    assert tr.same_person(track, at_floor, 0.1) is track and tr.splits == 0
    below = (0.59 * unit_mean + np.sqrt(1 - 0.59**2) * e[2]).astype(np.float32)
    new = tr.same_person(track, below, 0.2)
    assert new is not track and tr.splits == 1 and tr.tracks == [new]
    assert (new.box, new.face, new.votes.maxlen, new.still, len(new.votes)) == (track.box, track.face, 5, False, 0)
    assert (new.first_seen, new.last_seen, new.id) == (0.2, 0.2, track.id + 1)
    assert tr.same_person(new, below, 0.3) is new  # no earlier look on the new track: nothing to compare
    assert tr.same_person(track, None, 0.3) is track  # a look without an embedding: nothing to compare


def test_each_component_reports_its_own_health_and_reading_it_changes_nothing(tmp_path: Path) -> None:
    from edge.delivery.audit import AuditLog
    from edge.delivery.sinks import Sinks
    from edge.errors import EdgeError

    box = Outbox(tmp_path / "o.sqlite")
    box.put("t", b"1")
    assert box.health() == box.health() and (box.health().depth, box.health().dropped, box.health().problem) == (
        1,
        0,
        None,
    )
    box._db.close()  # the database can no longer be read: said, not raised
    broken = box.health()
    assert (broken.depth, broken.dropped) == (-1, -1) and str(broken.problem).startswith(
        f"outbox {box.path} cannot be read"
    )

    log = AuditLog(tmp_path / "audit")
    log.append("start", {})
    assert log.health().problem is None and log.health().head == log.head and log.health().failures == 0
    (tmp_path / "audit" / "audit-000001.jsonl").unlink()
    (tmp_path / "audit" / "audit-000001.jsonl").mkdir()
    with pytest.raises(EdgeError):
        log.append("event", {})
    assert log.health().failures == 1 and "cannot be opened" in str(log.health().problem)

    class Refusing:
        name = "refusing"

        def emit(self, event: MatchEvent) -> None:
            raise EdgeError("disk full")

    class Taking:
        name = "taking"

        def emit(self, event: MatchEvent) -> None:
            pass

    sinks = Sinks([Refusing(), Taking()])
    assert sinks.health().failures == {"refusing": 0, "taking": 0} and sinks.health().problem is None
    m = Match("alice", "Alice", 0.81, 0.3, 0.55, 2e-7, True)
    from edge.recognition.track import Confirmation

    event = make_event(Confirmation(3, m, 0.9, Box(64, 48, 192, 176), 3, 4, 0.0), 640, 480, "d", "m", True)
    assert sinks.emit(event) == ["refusing"]
    health = sinks.health()
    assert health.failures == {"refusing": 1, "taking": 0} and health.problem == "refusing: disk full"
    health.failures["refusing"] = 99  # a snapshot: changing it changes nothing
    assert sinks.health().failures["refusing"] == 1
