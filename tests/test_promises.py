"""Each safety promise pinned at its boundary (issue 28): a bug that moves a decision by the smallest
step fails here.

- the accept decision: a score equal to the threshold is accepted, the next float below it refused;
  the margin rule likewise;
- gallery admission: every bundle kind (full, removal, rollback) refused unsigned, signed by a key
  the device does not trust, or altered after signing, and the gallery in force kept; a bundle of
  the same version as the one in force refused at step ``version``;
- K of M: a vote older than the last M views does not count;
- removal: none of a removed person's template bytes is left in any file of the state directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.delivery.events import GalleryState
from edge.delivery.mqtt import MqttLink, Topics
from edge.delivery.outbox import Outbox
from edge.demo.broker import LocalBroker, free_port
from edge.device.config import load_settings
from edge.device.keys import DeviceKey
from edge.device.settings import GallerySettings, MatchSettings, TrackingSettings
from edge.gallery import sealed
from edge.gallery.admit import Policy, admit
from edge.gallery.bundle import BundleError, Identity
from edge.gallery.store import GalleryStore
from edge.gallery.sync import GallerySync
from edge.recognition.calibration import Band, Calibration, CalibrationTable
from edge.recognition.match import Gallery, GalleryHolder, Matcher
from edge.recognition.pipeline import Recognizer
from edge.recognition.track import Tracker
from edge.types import Box, Face, Match

from .test_match import CAL, LARGE, SMALL, every_kind

SHA = "ab" * 32
KEY = Ed25519PrivateKey.generate()
FOREIGN = Ed25519PrivateKey.generate()
DEVICE = DeviceKey(X25519PrivateKey.generate(), Path("device.key"))
POLICY = Policy((KEY.public_key(),), SHA, "lobby", 1 << 20, device_key=DEVICE)
DIM = 16


def make(
    ids: list[Identity],
    version: int,
    key: Ed25519PrivateKey = KEY,
    kind: str = "full",
    dtype: str = "float16",
    sha: str = SHA,
    embedder: str | None = None,
) -> bytes:
    """A bundle as devices take it by default: sealed to DEVICE, signed by ``key``."""
    return sealed.seal(ids, "lobby", version, sha, key, [DEVICE.public], kind, dtype, embedder)  # type: ignore[arg-type]


def below(x: float) -> np.float32:
    """The largest float32 below ``x``: the smallest step a decision can move by."""
    return np.nextafter(np.float32(x), np.float32(-np.inf))


def basis_gallery(n: int) -> Gallery:
    eye = np.eye(DIM, dtype=np.float32)
    return Gallery.build([(f"id{i}", f"Person {i}", eye[i : i + 1]) for i in range(n)], version=1)


def probe(first: float, second: float = 0.0) -> np.ndarray:
    """A query whose score with id0 is exactly ``first`` and with id1 exactly ``second`` (templates are the
    unit basis, so each score is one float32 coordinate, no rounding)."""
    q = np.zeros((1, DIM), np.float32)
    q[0, 0], q[0, 1] = first, second
    return q


# -- the accept decision -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 10])
def test_a_score_equal_to_the_threshold_is_accepted_and_the_next_float_below_refused(n: int) -> None:
    snap = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3)).snapshot(basis_gallery(n))
    threshold = np.float32(snap.bands[0].single[0])
    (at,) = snap.match(probe(float(threshold)))
    (under,) = snap.match(probe(float(below(threshold))))
    assert at.identity_id == under.identity_id == "id0"
    assert at.score == pytest.approx(float(threshold), abs=0) and at.accepted
    assert under.score < at.threshold and not under.accepted


def test_a_margin_equal_to_min_margin_is_accepted_and_the_next_float_below_refused() -> None:
    snap = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3, min_margin=0.25)).snapshot(basis_gallery(3))
    (at,) = snap.match(probe(0.75, 0.5))  # every value exact in float32: margin 0.25
    (under,) = snap.match(probe(0.75, float(np.nextafter(np.float32(0.5), np.float32(1)))))
    assert at.score >= at.threshold and under.score >= under.threshold  # only the margin decides
    assert at.margin == 0.25 and at.accepted
    assert under.margin < 0.25 and not under.accepted


def test_a_fused_look_is_judged_at_its_own_threshold_boundary() -> None:
    snap = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3)).snapshot(basis_gallery(4))
    threshold = np.float32(snap.bands[0].fused[0])
    (at,) = snap.match(probe(float(threshold)), looks=3)
    (under,) = snap.match(probe(float(below(threshold))), looks=3)
    assert at.accepted and not under.accepted and at.looks == 3


# -- gallery admission ---------------------------------------------------------------------------


def people(n: int, seed: int = 0) -> list[Identity]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        v = rng.normal(size=(2, DIM)).astype(np.float32)
        out.append(Identity(f"id{i}", f"Person {i}", v / np.linalg.norm(v, axis=1, keepdims=True), {}))
    return out


def removal_of(ids: list[str], version: int, key: Ed25519PrivateKey = KEY) -> bytes:
    gone = [Identity(i, None, np.zeros((0, DIM), np.float32), {}) for i in ids]
    return make(gone, version, key, kind="removal")


def bundle_of_kind(kind: str, key: Ed25519PrivateKey = KEY) -> bytes:
    """A bundle of ``kind`` that a device holding full v5 would apply if it were signed by a trusted key."""
    if kind == "full":
        return make(people(3, seed=1), 6, key)
    if kind == "removal":
        return removal_of(["id1"], 6, key)
    return make(people(2, seed=2), 3, key, kind="rollback")


def unsigned(data: bytes) -> bytes:
    """The same bytes with the signature (and its key id) zeroed: what an unsigned bundle is."""
    end = sealed.frame(data).head_end
    return data[:end] + bytes(len(data) - end)


def altered(data: bytes) -> bytes:
    """One byte of the signed header changed after signing (the version digit)."""
    at = data.index(b'"version":') + len(b'"version":')
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def make_sync(tmp_path: Path, states: list[GalleryState]) -> GallerySync:
    holder = GalleryHolder(Matcher(CAL, MatchSettings()))
    return GallerySync(
        holder,
        GalleryStore(tmp_path / "gallery", POLICY),
        POLICY,
        GallerySettings(max_bundle_bytes=1 << 20),
        lambda data: states.append(GalleryState.model_validate_json(data)),
    )


def files_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.parametrize("kind", ["full", "removal", "rollback"])
@pytest.mark.parametrize("fault", ["unsigned", "foreign key", "altered"])
def test_every_bundle_kind_is_refused_unsigned_foreign_or_altered_and_the_gallery_stays(
    tmp_path: Path, kind: str, fault: str
) -> None:
    states: list[GalleryState] = []
    sync = make_sync(tmp_path, states)
    assert sync.apply(make(people(3), 5))
    before = (sync.holder.current.gallery.identity_ids, sync.version, files_bytes(tmp_path))
    data = {
        "unsigned": unsigned(bundle_of_kind(kind)),
        "foreign key": bundle_of_kind(kind, FOREIGN),
        "altered": altered(bundle_of_kind(kind)),
    }[fault]
    assert admit(bundle_of_kind(kind), POLICY, 5).kind == kind  # the same bundle, well signed, passes
    assert not sync.apply(data)
    assert states[-1].error is not None and states[-1].error.step == "signature"
    assert (sync.holder.current.gallery.identity_ids, sync.version, files_bytes(tmp_path)) == before


def test_the_bundle_in_force_unsigned_is_refused_not_taken_for_its_retained_copy(tmp_path: Path) -> None:
    """The retained copy of the bundle in force is skipped (nothing to do); a copy whose signature was
    stripped or changed is another bundle, and refused."""
    states: list[GalleryState] = []
    sync = make_sync(tmp_path, states)
    v5 = make(people(3), 5)
    assert sync.apply(v5)
    published = len(states)
    assert sync.apply(v5) and len(states) == published  # the same bytes again: nothing to do, nothing said
    for copy in (unsigned(v5), v5[:-1] + bytes([v5[-1] ^ 1])):
        assert not sync.apply(copy)
        assert states[-1].error is not None and states[-1].error.step == "signature"


@pytest.mark.parametrize("kind", ["full", "removal"])
def test_a_bundle_of_the_version_in_force_is_refused_at_step_version(tmp_path: Path, kind: str) -> None:
    states: list[GalleryState] = []
    sync = make_sync(tmp_path, states)
    assert sync.apply(make(people(3), 5))
    assert sync.apply(removal_of(["id2"], 6))
    # A full bundle numbered like the removal would bring id2 back; a removal of the same number replays.
    same = make(people(3, seed=9), 6) if kind == "full" else removal_of(["id0"], 6)
    assert not sync.apply(same)
    assert states[-1].error is not None and states[-1].error.step == "version"
    assert sync.holder.current.gallery.identity_ids == ("id0", "id1")
    assert sync.apply(make(people(3, seed=9), 7))  # one above applies


def stored_plaintext(tmp_path: Path) -> bytes:
    """The device's stored gallery opened with its own key: what someone holding the device's disk and key reads."""
    store = GalleryStore(tmp_path / "gallery", POLICY)
    return store._open(store.current_path.read_bytes())


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_a_removal_leaves_none_of_the_removed_persons_template_bytes_on_disk(tmp_path: Path, dtype: str) -> None:
    """Nothing of a removed person is on the device's disk, in the clear or even for someone holding its key:
    not their id, not their label, not one 8-byte run of their templates (as they were received, or as the
    device keeps them)."""
    crowd = people(4, seed=3)
    crowd[2] = Identity("zoe-2026", "Zoe Quinn", crowd[2].embeddings, {"note": "visitor"})
    sync = make_sync(tmp_path, [])
    assert sync.apply(make(crowd, 5, dtype=dtype))
    received = {i.id: i for i in sync.applied.bundle.identities} if sync.applied else {}
    removed = received["zoe-2026"].embeddings
    forms = [removed.astype("<f4").tobytes(), removed.astype("<f2").tobytes()]
    plain = stored_plaintext(tmp_path)
    assert b"zoe-2026" in plain and b"Zoe Quinn" in plain and forms[0] in plain  # before: kept (sealed)
    assert b"Zoe Quinn" not in files_bytes(tmp_path) and b"zoe-2026" not in files_bytes(tmp_path)  # never clear
    assert sync.apply(removal_of(["zoe-2026"], 6))
    after = files_bytes(tmp_path) + stored_plaintext(tmp_path)
    assert b"zoe-2026" not in after and b"Zoe Quinn" not in after and b"visitor" not in after
    pieces = [f[i : i + 8] for f in forms for i in range(0, len(f) - 8, 4)]
    left = [p for p in pieces if p in after and any(p)]
    assert not left, f"{len(left)} of {len(pieces)} 8-byte runs of the removed templates are still on disk"
    assert sync.holder.current.gallery.identity_ids == ("id0", "id1", "id3")
    assert not list((tmp_path / "gallery").glob("*.tmp"))  # no stray copy of the old store
    # The others are intact on disk and open again after a restart.
    again = make_sync(tmp_path, [])
    assert again.load_from_disk() and again.holder.current.gallery.identity_ids == ("id0", "id1", "id3")
    assert again.state().removed_count == 1 and again.state().removed == []  # counted, never named


# -- K of M --------------------------------------------------------------------------------------


def _face(x: float) -> Face:
    return Face(Box(x, 10, x + 60, 70), np.zeros((6, 2), np.float32), 0.9)


def _vote(accepted: bool) -> Match:
    return Match("alice", "alice", 0.8 if accepted else 0.4, 0.3, 0.6, 1e-6, accepted)


@pytest.mark.parametrize(("k", "m"), [(3, 5), (2, 4)])
def test_a_vote_older_than_the_last_m_views_does_not_count(k: int, m: int) -> None:
    """k - 1 accepting views, m - k + 1 refusing ones, then accepting views one at a time: the
    confirmation comes only when k accepting views lie inside the last m, never counting the first ones
    once they have left the window."""
    tr = Tracker(TrackingSettings(confirm_k=k, confirm_m=m))
    votes = [True] * (k - 1) + [False] * (m - k + 1) + [True] * k
    confirmed_at = None
    for i, ok in enumerate(votes):
        ((track, face),) = tr.update([_face(10 + i * 0.1)], now=i * 0.03)
        if tr.add_evidence(track, _vote(ok), 0.9, face.box, i * 0.03) is not None:
            confirmed_at = i
            break
    # With a window one view too long, the first accepting views would still count one view earlier.
    assert confirmed_at == len(votes) - 1


# -- delivery ------------------------------------------------------------------------------------


def test_an_event_in_flight_when_the_broker_dies_is_kept_and_delivered_after_the_restart(tmp_path: Path) -> None:
    """Sent, not acknowledged (the broker frozen before its PUBACK), then the broker killed: the outbox still
    holds the row, and once a broker listens again the event reaches it and only then leaves the outbox."""
    port = free_port()
    first = LocalBroker(port=port).start()
    second = LocalBroker(port=port, extra="log_type all\n")
    box = Outbox(tmp_path / "outbox.sqlite")
    stop = threading.Event()
    settings = load_settings(environ={}, overrides={"mqtt": {"host": first.host, "port": port}})
    link = MqttLink(settings.mqtt, Topics("edge", "door"), box, stop)
    try:
        link.start()
        assert link.connected.wait(10)
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGSTOP)  # alive, reading nothing, acknowledging nothing
        seq = box.put("edge/door/match", b'{"event_id": "in-flight-1"}')
        link.notify()
        assert link.wait(lambda: link.in_flight == 1, 10), "the event was never handed to the MQTT library"
        assert [r.seq for r in box.pending()] == [seq]  # handed over is not delivered: the row stays
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        second.start()
        assert link.wait(lambda: box.depth() == 0, 30), "the event in flight was not delivered after the restart"
        assert re.search(r"Received PUBLISH from \S+ \(d\d, q1, r0, m\d+, 'edge/door/match'", second.log.read_text())
    finally:
        stop.set()
        link.close(None)
        box.close()
        for b in (first, second):
            b.__exit__(None)


# -- the audit log -------------------------------------------------------------------------------


@pytest.mark.slow
def test_each_confirmed_event_is_on_the_audit_log_chained_before_it_reaches_the_outbox(
    tmp_path: Path, recognizer: Recognizer
) -> None:
    """The device service on the demo clip (real frames, real models, its own broker): at the moment each
    event is written to the outbox, its record is already on the audit log and the log verifies."""
    from edge.delivery.audit import records_since, verify
    from edge.demo.assets import build_assets

    from .conftest import FACES
    from .test_reliability import RunningApp

    assets = build_assets(FACES, tmp_path / "demo")
    state = tmp_path / "state"
    seen_at_put: list[tuple[str, bool, bool]] = []
    with LocalBroker() as broker:
        settings = load_settings(
            environ={},
            overrides={
                "source": {"uri": str(assets.clip), "at_end": "exit", "rate": "fast"},
                "device": {"id": "audited", "state_dir": str(state)},
                "mqtt": {"host": broker.host, "port": broker.port},
                "gallery": {"path": str(assets.gallery)},
            },
        )
        running = RunningApp(settings, recognizer)
        app = running.app
        put = app.outbox.put

        def spied_put(topic: str, payload: bytes, now: float | None = None) -> int:
            if topic.endswith("/events/match"):
                event_id = json.loads(payload)["event_id"]
                on_record = [r["data"].get("event_id") for r in records_since(state / "audit")]
                seen_at_put.append((event_id, event_id in on_record, verify(state / "audit").ok))
            return put(topic, payload, now)

        app.outbox.put = spied_put  # type: ignore[method-assign]
        assert running.ended(180), "the run did not end at the end of the clip"
    assert running.result is not None and running.result.exit_code == 0
    assert len(seen_at_put) >= len(assets.enrolled), seen_at_put
    assert all(on_record and chained for _, on_record, chained in seen_at_put), seen_at_put


# -- cameras take turns --------------------------------------------------------------------------


def test_cameras_take_turns_so_none_is_always_first_and_one_with_nothing_new_is_passed_over() -> None:
    """docs/cameras.md: each round takes the newest frame of every camera that has one, the order turning
    round so none is always first."""
    from types import SimpleNamespace

    from edge.capture.reader import FrameHub, LatestFrame
    from edge.service.camera import FrameLoop
    from edge.types import Frame

    hub = FrameHub()
    cams = [SimpleNamespace(id=name, slot=LatestFrame(hub)) for name in ("door", "gate", "yard")]
    loop = FrameLoop(cams, hub)  # type: ignore[arg-type]
    never = threading.Event()
    image = np.zeros((8, 8, 3), np.uint8)
    orders = []
    for rnd in range(6):
        for cam in cams:
            if not (cam.id == "gate" and rnd == 4):  # gate has nothing new in round 4
                cam.slot.put(Frame(image, rnd, float(rnd)), wait_until_taken=False, stop=never)
        orders.append([cam.id for cam, _ in loop._take()])
    assert [o[0] for o in orders] == ["door", "gate", "yard", "door", "yard", "yard"]
    assert orders[4] == ["yard", "door"]  # gate passed over, the turn still moves on
    assert all(sorted(o) == ["door", "gate", "yard"] for i, o in enumerate(orders) if i != 4)
    assert all(cam.slot.dropped == 0 for cam in cams)  # every frame put was taken


def test_a_stored_gallery_of_another_embedder_is_kept_unused_and_the_next_bundle_applies(tmp_path: Path) -> None:
    """After a device changes embedder its stored gallery is not damage: it starts without one, says why
    (step model, both embedders named), keeps the file, and applies the next bundle made for it."""
    old_policy = Policy(
        (KEY.public_key(),), "cd" * 32, "lobby", 1 << 20, {"cd" * 32: "mobilefacenet_int8"}, device_key=DEVICE
    )
    old = GallerySync(
        GalleryHolder(Matcher(CAL, MatchSettings())),
        GalleryStore(tmp_path / "gallery", old_policy),
        old_policy,
        GallerySettings(),
        lambda data: None,
    )
    assert old.apply(make(people(2), 7, sha="cd" * 32, embedder="mobilefacenet_int8"))
    stored = files_bytes(tmp_path)
    policy = Policy((KEY.public_key(),), SHA, "lobby", 1 << 20, {SHA: "sface_int8"}, device_key=DEVICE)
    states: list[GalleryState] = []
    new = GallerySync(
        GalleryHolder(Matcher(CAL, MatchSettings())),
        GalleryStore(tmp_path / "gallery", policy),
        policy,
        GallerySettings(),
        lambda data: states.append(GalleryState.model_validate_json(data)),
    )
    assert not new.load_from_disk()
    assert new.last_error is not None and new.last_error.step == "model"
    assert "mobilefacenet_int8" in new.last_error.reason and "sface_int8" in new.last_error.reason
    assert new.health().problem == f"gallery bundle rejected at model: {new.last_error.reason}"
    assert (new.health().gallery, new.health().version) == (None, None)
    assert len(new.holder.current) == 0 and files_bytes(tmp_path) == stored  # nothing used, nothing lost
    assert new.apply(make(people(3), 1, embedder="sface_int8"))
    assert new.holder.current.gallery.identity_ids == ("id0", "id1", "id2")
    assert new.health().problem is None and (new.health().gallery, new.health().version) == ("lobby", 1)


# -- what a match says when there is nothing to match (mutation testing found these unpinned) ----


def test_an_empty_gallery_matches_nobody_and_says_so_field_by_field() -> None:
    snap = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3)).snapshot(Gallery.build([], version=7))
    (large,) = snap.match(probe(0.9), face_px=[100.0], looks=3)
    (small, grey) = snap.match(np.vstack([probe(0.9), probe(0.9)]), face_px=[40.0, 40.0], conditions=["colour", "grey"])
    assert large == Match(None, None, 0.0, 0.0, snap.bands[0].threshold, 1.0, False, 7, "80+ px", 3, 1, "colour")
    assert small == Match(None, None, 0.0, 0.0, snap.bands[1].threshold, 1.0, False, 7, "0-80 px", 1, 1, "colour")
    assert grey.condition == "colour"  # no grey tables in this calibration: judged, and said, as colour
    assert snap.match(np.zeros((0, DIM), np.float32)) == []


def test_without_sizes_or_conditions_a_face_is_judged_as_large_and_in_colour() -> None:
    snap = Matcher(CAL, MatchSettings(max_false_match_rate=1e-3)).snapshot(basis_gallery(3))
    (m,) = snap.match(probe(0.95))
    assert (m.band, m.condition, m.looks, m.templates, m.identity_id) == ("80+ px", "colour", 1, 1, "id0")
    with pytest.raises(ValueError, match="2 queries but 1 face sizes and 2 conditions"):
        snap.match(np.vstack([probe(0.9), probe(0.9)]), face_px=[100.0])


def test_a_face_exactly_at_a_bands_smallest_size_is_judged_in_that_band() -> None:
    """Face-size bands are 'at least min_px': a face of exactly 80 px is a large face, 79.9 px is not;
    a face below every band is judged with the smallest band's table."""
    three = Calibration(
        "sha",
        "mesh5+flip",
        (
            Band(80, LARGE, "80+ px", every_kind(LARGE)),
            Band(36, SMALL, "36-80 px", every_kind(SMALL)),
            Band(24, SMALL, "24-36 px", every_kind(SMALL)),
        ),
    )
    snap = Matcher(three, MatchSettings(max_false_match_rate=1e-3)).snapshot(basis_gallery(2))
    bands = [m.band for m in snap.match(np.vstack([probe(0.9)] * 4), face_px=[80.0, 79.9, 24.0, 10.0])]
    assert bands == ["80+ px", "36-80 px", "24-36 px", "24-36 px"]
    assert snap.threshold_for(30.0, "infrared").band.label == "24-36 px"  # a condition without tables: colour's
    assert Matcher(three, MatchSettings(max_false_match_rate=1e-3)).per_identity_fmr(2) == pytest.approx(5e-4)


def test_a_gallery_keeps_its_identities_in_order_read_only_and_refuses_what_it_cannot_judge() -> None:
    rows = np.eye(DIM, dtype=np.float64)
    g = Gallery.build([("a", "Alice", rows[:2] * 3), ("b", None, rows[2:3])])
    assert (g.version, g.name, g.labels, g.identity_ids) == (0, "", ("Alice", None), ("a", "b"))
    assert g.embeddings.dtype == np.float32 and g.templates.dtype == np.float32
    assert g.owner.tolist() == [0, 0, 1] and g.counts.tolist() == [2, 1] and g.starts.tolist() == [0, 2]
    np.testing.assert_allclose(np.linalg.norm(g.embeddings, axis=1), 1.0, rtol=1e-6)  # rows re-normalised
    for frozen in (g.embeddings, g.templates, g.counts):
        with pytest.raises(ValueError, match="read-only"):
            frozen[0] = 0
    with pytest.raises(ValueError, match="duplicate identity ids in gallery"):
        Gallery.build([("a", None, rows[:1]), ("a", None, rows[1:2])])
    with pytest.raises(ValueError, match="an identity has no embedding"):
        Gallery.build([("a", None, np.zeros((0, DIM), np.float32))])
    assert Gallery.build([("a", None, rows[:1])], version=4, name="lobby").without({"a"}).name == "lobby"


# -- expiry and admission details (mutation testing found these unpinned) --------------------------


def test_an_identity_expires_at_its_moment_and_an_unreadable_expiry_never_keeps_anyone_matchable() -> None:
    from datetime import datetime, timedelta, timezone

    from edge.gallery.admit import expired

    now = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
    assert expired({"expires_at": now.isoformat()}, now)  # at its moment: gone
    assert not expired({"expires_at": (now + timedelta(seconds=1)).isoformat()}, now)
    assert expired({"expires_at": "2026-12-06T12:00:00"}, now)  # no zone given: read as UTC
    assert not expired({"expires_at": "2026-12-06T12:00:01"}, now)
    assert expired({"expires_at": "next tuesday"}, now)  # unreadable: expired, never matchable forever
    assert not expired({}, now) and not expired({"expires_at": ""}, now)


def test_to_gallery_keeps_the_bundles_name_and_version_and_leaves_out_the_expired() -> None:
    from datetime import datetime, timezone

    from edge.gallery.admit import to_gallery

    crowd = people(3)
    crowd[1] = Identity("id1", None, crowd[1].embeddings, {"expires_at": "2000-01-01T00:00:00+00:00"})
    bundle = admit(make(crowd, 9), POLICY)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    g = to_gallery(bundle, now)
    assert (g.name, g.version, g.identity_ids) == ("lobby", 9, ("id0", "id2"))
    assert to_gallery(bundle, now, version=11).version == 11  # after a removal: the removal's version


def test_every_refusal_names_its_step_and_the_verified_version() -> None:
    from edge.gallery.admit import verify_bundle

    bundle = make(people(1), 12)
    with pytest.raises(BundleError) as none_trusted:
        admit(bundle, Policy((), SHA, "lobby", 1 << 20))
    assert (none_trusted.value.step, none_trusted.value.reason) == ("signature", "no trusted public key configured")
    with pytest.raises(BundleError) as big:
        admit(bundle, Policy((KEY.public_key(),), SHA, "lobby", 100, device_key=DEVICE))
    assert big.value.step == "size" and big.value.reason == f"{len(bundle)} bytes exceeds the limit of 100"
    with pytest.raises(BundleError) as model:
        admit(bundle, Policy((KEY.public_key(),), "cd" * 32, "lobby", 1 << 20, device_key=DEVICE))
    assert (model.value.step, model.value.version) == ("model", 12)
    assert "an embedder this device does not know (sha256 abababababab…)" in model.value.reason
    with pytest.raises(BundleError) as other:
        verify_bundle(bundle, [KEY.public_key()], SHA, gallery_name="garden", device_key=DEVICE)
    assert (other.value.step, other.value.version) == ("gallery", 12)
    assert other.value.reason == "bundle is for gallery 'lobby', this device follows 'garden'"
    ok = admit(bundle, POLICY)
    assert ok.created_at and ok.signer == bytes.fromhex(ok.signer).hex() and len(ok.signer) == 16


def test_each_match_reports_its_identity_label_version_margin_and_a_capped_rate() -> None:
    """Field by field, for several faces in one call (each face its own second best)."""
    fused_table = CalibrationTable.from_rows([[10.0**-k, 0.15 + 0.1 * k] for k in range(1, 7)], 1_000_000)
    kinds = {**every_kind(LARGE), (1, 3): fused_table}
    cal = Calibration("sha", "mesh5+flip", (Band(80, LARGE, "80+ px", kinds), Band(0, SMALL, "0-80 px", kinds)))
    matcher = Matcher(cal, MatchSettings(max_false_match_rate=1e-3))
    assert matcher.calibration is cal and matcher.conditions == ("colour",)
    gallery = Gallery.build([(f"id{i}", f"Person {i}", np.eye(DIM, dtype=np.float32)[i : i + 1]) for i in range(12)], 5)
    snap = matcher.snapshot(gallery)
    assert snap.condition == "colour" and snap.version == 5
    near_two, far = probe(0.9, 0.5), probe(0.8, 0.1)
    a, b = snap.match(np.vstack([near_two, far]))
    assert (a.label, a.gallery_version, b.gallery_version) == ("Person 0", 5, 5)
    assert a.margin == pytest.approx(0.4) and b.margin == pytest.approx(0.7)  # each its own second best
    (low,) = snap.match(probe(0.05))  # far below every row: the table's first rate × 12 identities, capped at 1
    assert low.est_false_match_rate == 1.0
    (one,) = matcher.snapshot(basis_gallery(1)).match(probe(0.7))
    assert one.margin == pytest.approx(1.7)  # one identity: the second best is taken as -1
    (fused,) = snap.match(probe(0.9), looks=3)
    assert fused.est_false_match_rate == pytest.approx(fused_table.fmr_at(0.9) * 12)  # the fused looks' table


def test_an_empty_gallery_is_empty_and_reports_a_grey_face_as_grey_where_grey_is_calibrated() -> None:
    grey = Calibration("sha", "mesh5+flip", (Band(0, SMALL, "0+ px", every_kind(SMALL)),), condition="grey")
    snap = Matcher(CAL, MatchSettings(), [grey]).snapshot(Gallery.empty())
    assert snap.gallery.embeddings.shape[0] == 0 and snap.gallery.templates.shape[0] == 0
    (m,) = snap.match(probe(0.9), conditions=["grey"])
    assert m.condition == "grey" and m.band == "0+ px" and not m.accepted


def test_a_short_photo_vector_is_made_unit_length_too() -> None:
    g = Gallery.build([("a", None, np.eye(DIM, dtype=np.float32)[:1] * 0.5)])
    np.testing.assert_allclose(np.linalg.norm(g.templates, axis=1), 1.0, rtol=1e-6)


def test_a_delivered_event_leaves_no_trace_of_whom_it_named_in_the_outbox_files(tmp_path: Path) -> None:
    """An event names the person matched; once the broker has it, the outbox overwrites it on disk."""
    box = Outbox(tmp_path / "outbox.sqlite")
    seqs = [
        box.put("edge/cam1/events/match", json.dumps({"identity_id": f"zoe-{i}", "label": "Zoe Quinn"}).encode())
        for i in range(50)
    ]
    box.put("edge/cam1/events/match", b'{"identity_id": "still-queued"}')
    files = lambda: b"".join(p.read_bytes() for p in tmp_path.glob("outbox.sqlite*"))  # noqa: E731
    assert b"Zoe Quinn" in files()  # queued: on disk, as it must be (nothing is lost in a power cut)
    for seq in seqs:
        box.ack(seq)
    box.close()
    assert b"Zoe Quinn" not in files() and b"zoe-1" not in files()
    assert b"still-queued" in files()  # what is not delivered is kept


def test_the_outbox_service_clock_starts_at_zero_only_moves_forward_and_survives_a_restart(tmp_path: Path) -> None:
    """Events age on the service's own clock (immune to wall-clock jumps): it starts at 0 for a new outbox,
    never runs backwards, and a restart resumes from what the last tick saved."""
    import sqlite3

    path = tmp_path / "a" / "b" / "outbox.sqlite"  # parents made
    box = Outbox(path)
    first = box.service_time()
    assert first >= 0.0
    later = first
    while later <= first:  # monotonic: it moves (a busy loop of a few microseconds, not a sleep)
        later = box.service_time()
    before_tick = box.service_time()
    box.tick()  # nothing else has saved the clock yet: what is stored now is the tick's
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT service_s FROM clock WHERE id = 1").fetchone()
    assert stored >= before_tick > 0
    seq = box.put("edge/cam1/events/match", b"{}", now=12.5)
    (row,) = box.pending()
    assert (row.seq, row.topic, row.payload, row.created) == (seq, "edge/cam1/events/match", b"{}", 12.5)
    box.close()
    again = Outbox(path)
    assert again.service_time() >= stored  # resumed from it, not from 0
    assert again.depth() == 1 and again.pending()[0].created == 12.5
    again.close()


def test_an_outbox_whose_disk_fails_says_so_when_saving_its_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from edge.errors import EdgeError

    box = Outbox(tmp_path / "outbox.sqlite")
    box._db.close()  # the database gone from under it
    with caplog.at_level(logging.WARNING, logger="edge.delivery.outbox"):
        box.tick()
        box.close()
    said = [r.getMessage() for r in caplog.records]
    assert (
        said[0] == f"outbox {tmp_path / 'outbox.sqlite'}: service clock not saved: Cannot operate on a closed database."
    )
    assert said[1] == (
        f"outbox {tmp_path / 'outbox.sqlite'}: service clock not saved at close: Cannot operate on a closed database."
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        EdgeError, match=r"^outbox .*file/outbox\.sqlite cannot be created: (Not a directory|File exists)$"
    ):
        Outbox(tmp_path / "file" / "outbox.sqlite")
